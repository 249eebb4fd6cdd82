"""The featurizer service: image -> verbalization (colour palette, tones, detected objects).

Importing this package is light; torch and ultralytics load only inside ``backends.yolo``
and ``shapes`` when a detector is loaded or trained.
"""
