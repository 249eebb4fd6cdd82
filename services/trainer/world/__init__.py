"""The synthetic brand world (design §7): fictional brands, rendered creatives and KPIs.

Training code may import :mod:`.brands`, :mod:`.render` and :mod:`.generate`; the hidden KPI
function in :mod:`.ground_truth` is for evaluation code only (a unit test enforces it).
"""
