"""`make eval-sd`: BoigSD and its baselines judged on the synthetic world's hidden true KPI."""
