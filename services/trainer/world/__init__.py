"""The synthetic brand world (design §7): fictional brands, rendered creatives and KPIs.

Training code may import :mod:`.brands` (public brand facts) and :mod:`.render`. The hidden KPI
function in :mod:`.ground_truth` and the tastes in :mod:`.tastes` are for world generation and
evaluation only, and :mod:`.generate` imports them, so training code reads a generated world
from disk instead of importing the generator (a unit test follows every import to check).
"""
