"""Test-wide setup: no network model hubs, ever."""

import os

# Set before any test module imports transformers/ultralytics, which read them at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
