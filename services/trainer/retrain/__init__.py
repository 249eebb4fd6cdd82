"""Closing the loop: fold KPI feedback into the dataset, retrain BoigLLM, measure the
candidate against the served checkpoint on the most recent held-out posts, and promote it only
when it is better beyond the confidence interval; every decision recorded (issue 14)."""
