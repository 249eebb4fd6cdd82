"""The trainer: offline dataset ingestion, BoigLLM fine-tuning, BoigSD alignment and evaluation."""
