"""The trainer: offline dataset ingestion, BoigLLM fine-tuning, BoigSD alignment and evaluation,
and the featurizer's default shapes detector (``detector``)."""
