"""The generator: Stable Diffusion (BoigSD) image generation on a Celery GPU worker."""

SERVICE = "generator"
"""How the generator names itself in metrics and logs."""
