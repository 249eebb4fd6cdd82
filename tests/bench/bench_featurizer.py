"""Featurizer throughput: colour+tone alone, YOLO alone, and the full featurize path.

Run: ``python tests/bench/bench_featurizer.py [--rounds N] [--weights best.pt]``. Uses the
shapes detector from ``$BOIG_HOME/models/yolo-shapes`` (trained first if missing). The goal
is full featurize >= 0.8 x YOLO-alone throughput: colour analysis must not be what limits a
featurizer whose detector is busy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script

from services.common.settings import default_shapes_detector_dir
from services.featurizer.backends.yolo import YoloDetector
from services.featurizer.colors import extract_palette, sample_colors
from services.featurizer.service import Featurizer
from services.featurizer.tones import analyze_tones
from services.trainer.detector.prepare import prepare_detector
from services.trainer.detector.scenes import render_scene, scene_rng

GOAL = 0.8
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "retina",
    "immunohistochemistry",
    "hubble_deep_field",
)


def bench_images(side: int = 512) -> list[Image.Image]:
    """Photo-like images resized to ``side`` plus drawn shape scenes, half each."""
    photos = [
        Image.fromarray(np.asarray(getattr(data, name)())[..., :3]).resize(
            (side, side), Image.Resampling.LANCZOS
        )
        for name in PHOTOS
    ]
    drawn = [render_scene(scene_rng(9, "test", i), size=side)[0] for i in range(len(photos))]
    return photos + drawn


def throughput(run: Callable[[], object], images: int, rounds: int) -> float:
    """Images per second: the median of ``rounds`` timed runs after one warm-up run."""
    run()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return images / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--weights", type=Path, default=None, help="default: the shapes detector")
    parser.add_argument("--image-size", type=int, default=None, help="detector input size")
    args = parser.parse_args()

    weights = args.weights or prepare_detector(default_shapes_detector_dir(), progress=print)
    detector = YoloDetector.load(weights, image_size=args.image_size)
    images = bench_images()
    count = len(images)

    import torch

    print(
        f"{count} images of 512x512 ({len(PHOTOS)} photos, {len(PHOTOS)} drawn); "
        f"detector {weights} at {detector.image_size} px on {detector.device}; "
        f"torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}; "
        f"load avg {os.getloadavg()[0]:.2f}"
    )

    colors_only = Featurizer(None)
    full = Featurizer(detector)

    def colors_and_tones() -> None:
        for image in images:
            sample = sample_colors(image)
            extract_palette(sample)
            analyze_tones(sample)

    def sequential() -> None:
        colors_only.featurize(images, detect_objects=False)
        detector.detect(images)

    results = {
        "colour+tone": throughput(colors_and_tones, count, args.rounds),
        "colour+tone via Featurizer": throughput(
            lambda: colors_only.featurize(images, detect_objects=False), count, args.rounds
        ),
        "YOLO alone (one batch)": throughput(lambda: detector.detect(images), count, args.rounds),
        "full, sequential (colour then YOLO)": throughput(sequential, count, args.rounds),
        "full featurize (overlapped, as served)": throughput(
            lambda: full.featurize(images), count, args.rounds
        ),
    }
    full.close()
    for name, value in results.items():
        print(f"  {name:42s} {value:8.1f} images/s  ({1000 / value:6.2f} ms/image)")
    yolo = results["YOLO alone (one batch)"]
    for name in ("full, sequential (colour then YOLO)", "full featurize (overlapped, as served)"):
        ratio = results[name] / yolo
        verdict = "met" if ratio >= GOAL else "NOT met"
        print(f"  ratio {name} / YOLO alone: {ratio:.2f} (goal >= {GOAL}: {verdict})")


if __name__ == "__main__":
    main()
