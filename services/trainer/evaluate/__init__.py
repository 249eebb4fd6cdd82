"""Honest evaluation of BoigLLM against baselines on the held-out (future) split (design §5).

Description metrics per KPI bucket and behaviour-simulation metrics, each with a bootstrap
95% confidence interval; a printed table and an HTML report. Evaluation code may read the
synthetic world's hidden ground truth; training code may not.
"""
