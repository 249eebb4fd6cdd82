"""Dataset ingestion for BoigLLM: rows -> validated, split, featurized instruction dataset."""
