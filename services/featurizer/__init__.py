"""The featurizer service: image -> verbalization (colour palette, tones, detected objects).

Importing this package is light; torch and ultralytics load only inside ``backends.yolo``
when a detector is loaded. The default detector is trained by ``services.trainer.detector``.
"""
