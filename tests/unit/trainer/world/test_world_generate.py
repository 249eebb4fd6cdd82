"""Generated worlds on disk: determinism, BoigBench row shape, time span, speed and the CLI."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from services.trainer.world.__main__ import cli
from services.trainer.world.brands import BANK, COFFEE, DEFAULT_BRANDS
from services.trainer.world.generate import (
    STRAY_COLOR_SHARE,
    WorldManifest,
    generate_world,
    sample_creative_spec,
)
from services.trainer.world.tastes import taste_of

ROW_KEYS = ["id", "account", "posted_at", "text", "keywords", "media", "kpi_name", "kpi_value"]


def _rows(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "posts.jsonl").read_text().splitlines()]


def _when(row: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(row["posted_at"]))


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorldManifest, float]:
    out = tmp_path_factory.mktemp("world")
    started = time.perf_counter()
    manifest = generate_world(out, seed=3, posts_per_brand=20)
    return out, manifest, time.perf_counter() - started


def test_a_small_world_generates_in_a_few_seconds(
    small_world: tuple[Path, WorldManifest, float],
) -> None:
    _, manifest, seconds = small_world
    assert manifest.posts == 4 * 20
    assert seconds < 15, f"4 x 20 posts took {seconds:.1f} s"


def test_rows_have_the_boigbench_shape(small_world: tuple[Path, WorldManifest, float]) -> None:
    out, _, _ = small_world
    rows = _rows(out)
    assert len(rows) == 80 and len({row["id"] for row in rows}) == 80
    for row in rows:
        assert list(row) == ROW_KEYS
        assert str(row["posted_at"]).endswith("Z")
        assert _when(row).tzinfo == UTC
        assert row["kpi_name"] == "likes"
        assert isinstance(row["kpi_value"], int) and row["kpi_value"] > 0
        assert isinstance(row["text"], str) and row["text"]
        assert isinstance(row["keywords"], list) and 2 <= len(row["keywords"]) <= 4
        media = out / str(row["media"])
        assert not Path(str(row["media"])).is_absolute() and media.is_file()
        with Image.open(media) as image:
            assert image.format == "PNG" and image.size == (256, 256)
    assert [_when(row) for row in rows] == sorted(_when(row) for row in rows)
    assert Counter(row["account"] for row in rows) == {b.account: 20 for b in DEFAULT_BRANDS}


def test_world_json_describes_the_run_but_hides_the_taste(
    small_world: tuple[Path, WorldManifest, float],
) -> None:
    out, manifest, _ = small_world
    text = (out / "world.json").read_text()
    assert WorldManifest.model_validate_json(text) == manifest
    assert json.loads(text)["seed"] == 3 and manifest.generator_version >= 1
    for secret in ("palette", "object_effects", "peak_hour", "taste", "noise"):
        assert secret not in text
    assert not (out / "truth.jsonl").exists()


def test_brand_scale_shows_in_the_kpis(small_world: tuple[Path, WorldManifest, float]) -> None:
    out, _, _ = small_world
    by_account: dict[str, list[float]] = {}
    for row in _rows(out):
        by_account.setdefault(str(row["account"]), []).append(float(str(row["kpi_value"])))
    medians = {account: float(np.median(values)) for account, values in by_account.items()}
    # The bank's scale (320 likes) is a fifth of the coffee brand's (1000).
    assert medians[BANK.account] < medians[COFFEE.account] / 2


def test_same_seed_same_bytes_other_seed_other_world(tmp_path: Path) -> None:
    brands = DEFAULT_BRANDS[:2]
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_world(tmp_path / name, seed=seed, brands=brands, posts_per_brand=4, image_size=64)
    first, second, other = (tmp_path / name for name in "abc")
    assert (first / "posts.jsonl").read_bytes() == (second / "posts.jsonl").read_bytes()
    assert (first / "world.json").read_bytes() == (second / "world.json").read_bytes()
    images = sorted(path.name for path in (first / "media").iterdir())
    assert len(images) == 8
    for name in images:
        assert (first / "media" / name).read_bytes() == (second / "media" / name).read_bytes()
    assert (first / "posts.jsonl").read_bytes() != (other / "posts.jsonl").read_bytes()


def test_posts_spread_over_the_span_with_growing_volume(tmp_path: Path) -> None:
    generate_world(
        tmp_path,
        seed=1,
        brands=(COFFEE,),
        posts_per_brand=150,
        start_year=2018,
        years=5,
        image_size=32,
    )
    times = [_when(row) for row in _rows(tmp_path)]
    assert min(times) >= datetime(2018, 1, 1, tzinfo=UTC)
    assert max(times) < datetime(2023, 1, 1, tzinfo=UTC)
    per_year = Counter(moment.year for moment in times)
    assert set(per_year) == {2018, 2019, 2020, 2021, 2022}
    assert per_year[2022] > per_year[2018]
    hours = Counter(moment.hour for moment in times)
    habitual = sum(hours[hour] for hour in COFFEE.habits.hours)
    assert habitual > 0.6 * len(times)  # most posts at the brand's habitual hours


def test_truth_goes_only_where_asked_and_matches_the_posts(tmp_path: Path) -> None:
    generate_world(
        tmp_path / "world",
        seed=2,
        brands=(BANK,),
        posts_per_brand=5,
        image_size=32,
        truth_dir=tmp_path / "truth",
    )
    truth = [
        json.loads(line) for line in (tmp_path / "truth" / "truth.jsonl").read_text().splitlines()
    ]
    assert [row["id"] for row in truth] == [row["id"] for row in _rows(tmp_path / "world")]
    assert all(row["expected_kpi"] > 0 and "palette" in row["attributes"] for row in truth)
    assert not (tmp_path / "world" / "truth.jsonl").exists()


def test_stock_variant_counts_downloads(tmp_path: Path) -> None:
    manifest = generate_world(
        tmp_path, seed=0, brands=(COFFEE,), posts_per_brand=3, variant="stock", image_size=32
    )
    assert manifest.kpi_name == "downloads"
    assert {row["kpi_name"] for row in _rows(tmp_path)} == {"downloads"}


def test_an_existing_world_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    generate_world(tmp_path, seed=0, brands=(COFFEE,), posts_per_brand=3, image_size=32)
    with pytest.raises(FileExistsError):
        generate_world(tmp_path, seed=0, brands=(COFFEE,), posts_per_brand=3, image_size=32)
    generate_world(
        tmp_path, seed=0, brands=(COFFEE,), posts_per_brand=2, image_size=32, overwrite=True
    )
    assert len(list((tmp_path / "media").iterdir())) == 2


def test_cli_writes_a_world(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--out", str(tmp_path), "--seed", "0", "--posts-per-brand", "2", "--image-size", "32"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 8 posts of 4 brands" in result.output
    assert len(_rows(tmp_path)) == 8


def test_cli_refuses_an_unknown_variant(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--out", str(tmp_path), "--variant", "tv"])
    assert result.exit_code != 0
    assert not (tmp_path / "posts.jsonl").exists()


def test_a_creative_follows_one_scheme_the_taste_or_the_house_style() -> None:
    """Designers work in schemes: a creative's colours and shapes come from the taste or from
    the house style as a whole, so what a post should look like to reach a level differs in
    place, not only in spread. A few colours stray from the scheme."""
    brand, taste = COFFEE, taste_of(COFFEE)
    liked = {label for label, effect in taste.object_effects.items() if effect > 0}
    rng = np.random.default_rng(5)
    schemes = {"taste": 0, "house": 0, "unclear": 0}
    colours, strays = 0, 0
    for _ in range(400):
        spec = sample_creative_spec(rng, brand, 2018.0)  # before any palette drift
        drawn = [*spec.background, *(shape.rgb for shape in spec.shapes)]
        near = {
            name: [min(np.linalg.norm(np.subtract(rgb, c)) for c in palette) < 40 for rgb in drawn]
            for name, palette in (
                ("taste", taste.palette),
                ("house", brand.habits.house_palette),
            )
        }
        if sum(near["taste"]) == sum(near["house"]):  # e.g. a lone stray colour
            schemes["unclear"] += 1
            continue
        scheme = max(near, key=lambda name: sum(near[name]))
        schemes[scheme] += 1
        colours += len(drawn)
        strays += len(drawn) - sum(near[scheme])
        labels = {shape.label for shape in spec.shapes}
        assert labels <= (liked if scheme == "taste" else set(brand.habits.house_shapes))
    share = brand.habits.taste_share
    assert schemes["unclear"] < 20
    assert abs(schemes["taste"] / (400 - schemes["unclear"]) - share) < 0.07
    assert 0 < strays / colours < 2 * STRAY_COLOR_SHARE


def test_house_shapes_must_be_known_classes() -> None:
    with pytest.raises(ValueError, match="unknown object classes"):
        dataclasses.replace(COFFEE.habits, house_shapes=("hexagon",))
