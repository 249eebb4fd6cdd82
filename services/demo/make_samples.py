"""Regenerate the bundled sample creatives (deterministic; run once, files are committed).

Five drawn creatives in the synthetic shapes world the default detector knows, and two
real photographs from scikit-image's data set, all 256 px.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

SAMPLES = Path(__file__).resolve().parent / "samples"
SIZE = 256


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    import math

    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _gradient(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    for y in range(SIZE):
        t = y / (SIZE - 1)
        color = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (SIZE, y)], fill=color)
    return image


def drawn_creatives() -> dict[str, Image.Image]:
    creatives: dict[str, Image.Image] = {}

    image = _gradient((255, 200, 80), (250, 120, 40))
    draw = ImageDraw.Draw(image)
    draw.ellipse([60, 40, 196, 176], fill=(255, 240, 120))
    draw.rectangle([0, 200, 256, 256], fill=(200, 60, 30))
    creatives["sunny-circle"] = image

    image = Image.new("RGB", (SIZE, SIZE), (15, 25, 70))
    draw = ImageDraw.Draw(image)
    draw.rectangle([40, 60, 120, 140], fill=(40, 120, 230))
    draw.rectangle([140, 120, 220, 200], fill=(220, 230, 245))
    creatives["night-squares"] = image

    image = Image.new("RGB", (SIZE, SIZE), (150, 150, 145))
    draw = ImageDraw.Draw(image)
    draw.polygon([(128, 50), (208, 190), (48, 190)], fill=(170, 168, 160))
    creatives["grey-triangle"] = image

    image = Image.new("RGB", (SIZE, SIZE), (10, 10, 10))
    draw = ImageDraw.Draw(image)
    draw.polygon(_star(128, 128, 90), fill=(255, 215, 0))
    creatives["gold-star"] = image

    image = _gradient((120, 200, 120), (30, 110, 60))
    draw = ImageDraw.Draw(image)
    draw.ellipse([30, 30, 110, 110], fill=(250, 250, 250))
    draw.polygon([(170, 120), (230, 230), (110, 230)], fill=(240, 90, 60))
    creatives["garden-mix"] = image
    return creatives


def photo_creatives() -> dict[str, Image.Image]:
    from skimage import data

    return {
        "coffee-photo": Image.fromarray(data.coffee()).resize((SIZE, 192)),
        "cat-photo": Image.fromarray(data.chelsea()).resize((SIZE, 168)),
    }


def main() -> None:
    SAMPLES.mkdir(exist_ok=True)
    for name, image in drawn_creatives().items():
        image.save(SAMPLES / f"{name}.png", optimize=True)
    for name, image in photo_creatives().items():
        image.save(SAMPLES / f"{name}.jpg", quality=88)
    context = {
        "context": {
            "account": "sunbrew",
            "text": "Summer is here: iced coffee, half price all weekend",
            "keywords": ["coffee", "summer", "sale"],
            "posted_at": "2026-06-12T09:00:00Z",
        },
        "target": {"name": "likes", "level": "high"},
    }
    (SAMPLES / "request.json").write_text(json.dumps(context, indent=2) + "\n")


if __name__ == "__main__":
    main()
