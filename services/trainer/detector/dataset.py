"""The shape world written as an ultralytics dataset: PNG images and YOLO txt labels."""

from __future__ import annotations

from pathlib import Path

from services.trainer.detector.config import DEFAULT_CONFIG, DetectorConfig
from services.trainer.detector.scenes import DrawnShape, render_example, scene_rng


def yolo_label_lines(shapes: list[DrawnShape], *, size: int, classes: tuple[str, ...]) -> list[str]:
    """YOLO txt rows ``class x_center y_center width height``, normalized to [0, 1]."""
    lines = []
    for shape in shapes:
        x0, y0, x1, y1 = shape.box
        lines.append(
            f"{classes.index(shape.label)} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
            f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
        )
    return lines


def write_dataset(out_dir: Path, config: DetectorConfig = DEFAULT_CONFIG) -> Path:
    """Write an ultralytics dataset (images/ and labels/ for train and val); return data.yaml.

    A negative (shape-free) image gets an empty label file: ultralytics' "background".
    """
    for split, count in (("train", config.train_images), ("val", config.val_images)):
        images_dir = out_dir / "images" / split
        labels_dir = out_dir / "labels" / split
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, shapes = render_example(
                scene_rng(config.seed, split, index),
                size=config.image_size,
                max_shapes=config.max_shapes,
                classes=config.classes,
                negative_fraction=config.negative_fraction,
            )
            stem = f"{split}-{index:05d}"
            image.save(images_dir / f"{stem}.png")
            rows = yolo_label_lines(shapes, size=config.image_size, classes=config.classes)
            (labels_dir / f"{stem}.txt").write_text("".join(f"{row}\n" for row in rows))
    data_yaml = out_dir / "data.yaml"
    names = "\n".join(f"  {index}: {name}" for index, name in enumerate(config.classes))
    data_yaml.write_text(
        f"path: {out_dir.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    return data_yaml
