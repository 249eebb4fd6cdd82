"""The generator: Stable Diffusion (BoigSD) image generation on a Celery GPU worker."""
