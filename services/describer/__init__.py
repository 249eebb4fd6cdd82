"""The describer service: BoigLLM content and behaviour simulation over HTTP (design §3)."""
