"""BOIG: behaviour-optimized image generation services."""

__version__ = "0.1.0"
