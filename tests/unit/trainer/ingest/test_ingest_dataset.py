"""The instruction dataset: both directions, KPI levels, versioned folders and the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.common.contracts import KpiLevel, Verbalization
from services.common.verbalization import parse
from services.trainer.ingest import __main__ as cli
from services.trainer.ingest import dataset as dataset_module
from services.trainer.ingest.dataset import prune_dataset_versions, read_manifest
from services.trainer.ingest.kpi import KpiBuckets
from services.trainer.ingest.pipeline import NoRowsKept, ingest
from services.trainer.ingest.split import SplitMode


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def data_file(tmp_path: Path, history, write_rows) -> Path:
    records = history({"acme": 10, "globex": 4})
    records.append({**records[0], "id": "bad", "kpi_value": -1})
    return write_rows(records, tmp_path / "data" / "rows.jsonl")


async def test_both_directions_share_rows_and_carry_structured_fields(
    tmp_path: Path, data_file: Path, featurizer
) -> None:
    outcome = await ingest(
        data_file,
        out=tmp_path / "out",
        featurizer=featurizer,
        test_fraction=0.3,
        buckets=KpiBuckets(min_posts=5),
        progress=False,
    )
    version = outcome.version_dir
    assert version == tmp_path / "out" / "v1"
    content = _lines(version / "content" / "train.jsonl")
    behaviour = _lines(version / "behaviour" / "train.jsonl")
    assert [e["id"] for e in content] == [e["id"] for e in behaviour]
    assert {e["direction"] for e in content} == {"content"}
    example = content[0]
    assert set(example) == {
        "direction",
        "id",
        "context",
        "kpi_name",
        "level",
        "percentile",
        "too_few_posts",
        "verbalization",
    }
    assert example["context"]["account"] in {"acme", "globex"}
    assert parse(example["verbalization"]).caption is not None  # the §4 text form
    # acme has 7 train posts (>= 5), globex 2: only globex is flagged, in train and in test.
    flags = {e["context"]["account"]: e["too_few_posts"] for e in content}
    assert flags == {"acme": False, "globex": True}
    manifest = read_manifest(version)
    assert manifest["kpi"]["flagged_accounts"] == {"train": ["globex"], "test": ["acme", "globex"]}


async def test_train_levels_never_depend_on_test_posts(
    tmp_path: Path, data_file: Path, featurizer
) -> None:
    outcome = await ingest(
        data_file,
        out=tmp_path / "out",
        featurizer=featurizer,
        buckets=KpiBuckets(min_posts=1),
        progress=False,
    )
    train = _lines(outcome.version_dir / "behaviour" / "train.jsonl")
    acme = sorted(e["percentile"] for e in train if e["context"]["account"] == "acme")
    n = len(acme)
    assert acme == [(i + 0.5) / n for i in range(n)]  # ranked among train posts only


async def test_manifest_records_counts_hashes_and_config(
    tmp_path: Path, data_file: Path, featurizer
) -> None:
    out = tmp_path / "out"
    outcome = await ingest(
        data_file, out=out, featurizer=featurizer, test_fraction=0.25, progress=False
    )
    manifest = read_manifest(outcome.version_dir)
    assert manifest["source"]["sha256"] == _sha256(data_file)
    assert manifest["source"]["variant"] == "posts"
    assert manifest["featurizer_version"] == "fake-1"
    assert manifest["rows"] == {"read": 15, "kept": 14, "skipped": {"bad_kpi": 1}}
    assert manifest["split"]["mode"] == "temporal"
    assert set(manifest["split"]["cut_times"]) == {"acme", "globex"}
    assert manifest["kpi"]["buckets"]["cut_points"] == [0.6, 0.9]
    assert manifest["counts"] == {
        "content": {"train": 10, "test": 4},
        "behaviour": {"train": 10, "test": 4},
    }
    for relative, digest in manifest["files"].items():
        path = outcome.version_dir / relative
        assert _sha256(path) == digest, relative
    (rejected,) = _lines(outcome.version_dir / "rejected.jsonl")
    assert rejected["kind"] == "bad_kpi" and rejected["id"] == "bad"


async def test_each_run_is_a_new_version_and_reuses_the_cache(
    tmp_path: Path, data_file: Path, featurizer
) -> None:
    out = tmp_path / "out"
    await ingest(data_file, out=out, featurizer=featurizer, progress=False)
    second = await ingest(
        data_file, out=out, featurizer=featurizer, split_mode=SplitMode.RANDOM, progress=False
    )
    assert second.version_dir == out / "v2"
    assert (out / "latest").read_text().strip() == "v2"
    assert featurizer.featurized == 14  # the second run featurized nothing
    assert read_manifest(second.version_dir)["split"]["mode"] == "random"


def test_prune_keeps_the_newest_versions_and_the_latest_one(tmp_path: Path) -> None:
    for number in range(1, 6):
        (tmp_path / f"v{number}").mkdir()
        (tmp_path / f"v{number}" / "manifest.json").write_text("{}")
    (tmp_path / "featurizer-cache.jsonl").write_text("")
    (tmp_path / "latest").write_text("v1\n")  # pointed back at the oldest

    assert prune_dataset_versions(tmp_path, keep=2) == ["v2", "v3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "featurizer-cache.jsonl",
        "latest",
        "v1",
        "v4",
        "v5",
    ]
    assert prune_dataset_versions(tmp_path, keep=2) == []


async def test_a_failed_write_leaves_no_version_behind(
    tmp_path: Path, data_file: Path, featurizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(dataset_module, "_publish", crash)
    with pytest.raises(OSError, match="disk full"):
        await ingest(data_file, out=out, featurizer=featurizer, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["featurizer-cache.jsonl"]


async def test_no_kept_rows_is_an_error_with_the_summary(
    tmp_path: Path, history, write_rows, featurizer
) -> None:
    records = history({"acme": 2})
    for record in records:
        record["posted_at"] = "yesterday"
    path = write_rows(records, tmp_path / "rows.csv")
    with pytest.raises(NoRowsKept) as caught:
        await ingest(path, out=tmp_path / "out", featurizer=featurizer, progress=False)
    assert caught.value.summary.skipped == {"bad_timestamp": 2}
    assert featurizer.calls == []


def test_cli_prints_the_summary_and_writes_a_version(
    tmp_path: Path, data_file: Path, featurizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def over_fake_http(data: Path, **options: object):
        return await ingest(data, out=options["out"], featurizer=featurizer, progress=False)

    monkeypatch.setattr(cli, "ingest_over_http", over_fake_http)
    result = CliRunner().invoke(cli.app, [str(data_file), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "skipped: bad_kpi" in result.output
    assert "v1" in result.output
    assert (tmp_path / "out" / "v1" / "manifest.json").exists()


async def test_ingest_writes_the_training_history_and_refreshes_the_describers(
    tmp_path: Path, data_file: Path, featurizer
) -> None:
    from services.common.history import HistoryStore
    from services.trainer.ingest.dataset import TRAIN_HISTORY_FILE

    serving = tmp_path / "history" / "history.json"
    HistoryStore.from_looks(
        [
            ("acme", "likes", KpiLevel.HIGH, Verbalization()),
            ("other", "likes", KpiLevel.LOW, Verbalization()),
        ]
    ).write(serving)
    outcome = await ingest(
        data_file,
        out=tmp_path / "out",
        featurizer=featurizer,
        test_fraction=0.3,
        progress=False,
        history_path=serving,
    )
    train = _lines(outcome.version_dir / "content" / "train.jsonl")
    test = _lines(outcome.version_dir / "content" / "test.jsonl")
    trained = HistoryStore.read(outcome.version_dir / TRAIN_HISTORY_FILE)
    # The training split's history holds the training posts only: never a test post.
    assert sum(t.posts for t in trained.tallies.values()) == len(train)
    store = HistoryStore.read(serving)
    # The describer's store: every ingested post, the ingested accounts replaced, others kept.
    assert sum(t.posts for k, t in store.tallies.items() if k[0] != "other") == len(train) + len(
        test
    )
    assert "other" in store.accounts()
