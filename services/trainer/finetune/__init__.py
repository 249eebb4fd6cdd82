"""BoigLLM LoRA fine-tuning on the instruction dataset, rendered with the describer's prompts."""
