"""The featurizer's default object detector, built rather than downloaded: a synthetic shape
world (``scenes``), its ultralytics dataset (``dataset``) and the cached YOLO training that
``make models`` runs (``prepare``; ``python -m services.trainer.detector --out DIR``)."""
