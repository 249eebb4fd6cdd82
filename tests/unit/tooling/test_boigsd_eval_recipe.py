"""`make eval-sd`'s bookkeeping: the world's hidden truth recovered from its seed, and the
snapshots its curve judges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.tooling import boigsd_eval_recipe, llm_recipe


def test_the_truth_is_regenerated_from_the_seed_and_checked_against_the_posts(
    tmp_path: Path,
) -> None:
    paths = llm_recipe.LlmPaths(home=tmp_path, seed=3, posts_per_brand=2)
    posts = llm_recipe.ensure_world(paths)
    truth = boigsd_eval_recipe.ensure_truth(paths)

    assert truth.parent.parent == tmp_path / "truth"  # apart from the world training reads
    assert not (paths.world / truth.name).exists()
    rows = [json.loads(line) for line in truth.read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in posts.read_text().splitlines()]
    assert sorted(row["id"] for row in rows) == sorted(ids)
    assert all(row["expected_kpi"] > 0 and "breakdown" in row for row in rows)

    truth.unlink()
    posts.write_text(posts.read_text().replace('"likes"', '"clicks"', 1))
    with pytest.raises(SystemExit, match="not what its seed generates"):
        boigsd_eval_recipe.ensure_truth(paths)
    assert not truth.exists()


def test_the_curve_judges_a_bounded_spread_of_snapshots_with_the_published_one() -> None:
    found = [(10 * i, Path(f"epoch-{10 * i}")) for i in range(13)]
    picked = boigsd_eval_recipe._curve_snapshots(found, published=70, most=5)
    epochs = [epoch for epoch, _ in picked]
    assert epochs[0] == 0 and epochs[-1] == 120 and 70 in epochs
    assert len(epochs) <= 6 and epochs == sorted(epochs)
    assert boigsd_eval_recipe._curve_snapshots(found[:3], published=None) == found[:3]
