"""The scorer: ranks candidate creatives by a reward for a context and KPI target (design §5)."""
