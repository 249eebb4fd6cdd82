"""Training captions are the prompts the generator writes for each creative's description."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from services.common.contracts import ColorSwatch, Context, DetectedObject, Verbalization
from services.common.image_prompts import estimate_clip_tokens, render_prompt
from services.common.verbalization import render
from services.trainer.ingest.dataset import Direction, InstructionExample
from services.trainer.world_sd.data import captioned_images, load_image, pixels, to_images

DESCRIPTION = Verbalization(
    colors=[ColorSwatch(name="gold", rgb=(230, 190, 40), coverage=0.8)],
    objects=[DetectedObject(label="star", confidence=0.9, box=(0.0, 0.0, 0.3, 0.3))],
)


def _example(post: str, split_context: str) -> InstructionExample:
    return InstructionExample(
        direction=Direction.CONTENT,
        id=post,
        context=Context(account="acme", text=split_context, keywords=["toys"]),
        kpi_name="likes",
        level="high",
        percentile=0.95,
        too_few_posts=False,
        verbalization=render(DESCRIPTION),
    )


def test_each_content_example_with_an_image_gets_the_generators_prompt(tmp_path: Path) -> None:
    folder = tmp_path / "dataset"
    (folder / "content").mkdir(parents=True)
    lines = [
        _example("p1", "Big sale").model_dump_json(),
        _example("p2", "No image").model_dump_json(),
    ]
    (folder / "content" / "train.jsonl").write_text("\n".join(lines) + "\n")
    media = {"p1": tmp_path / "p1.png"}

    images = captioned_images(folder, media, "train", count_tokens=estimate_clip_tokens)

    assert [image.id for image in images] == ["p1"]  # p2 has no image: skipped
    context = Context(account="acme", text="Big sale", keywords=["toys"])
    assert images[0].caption == render_prompt(DESCRIPTION, context)
    assert images[0].caption == "Big sale, a star at top left, mostly gold background, toys"
    assert images[0].description == DESCRIPTION and images[0].level == "high"


def test_pixels_round_trip_and_box_downsampling_keeps_flat_colours(tmp_path: Path) -> None:
    path = tmp_path / "flat.png"
    image = Image.new("RGB", (256, 256), (20, 30, 90))
    image.paste((240, 200, 40), (0, 0, 128, 256))  # left half gold
    image.save(path)

    small = load_image(path, 64)
    assert small.size == (64, 64)
    array = np.asarray(small)
    assert (array[:, :32] == (240, 200, 40)).all() and (array[:, 32:] == (20, 30, 90)).all()
    batch = pixels([small])
    assert batch.shape == (1, 3, 64, 64) and batch.min() >= -1 and batch.max() <= 1
    assert np.array_equal(np.asarray(to_images(batch)[0]), array)
