"""Reading rows: formats, the stock variant, and one clear error per bad row."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from services.common.settings import ImageLimits
from services.trainer.ingest.rows import ErrorKind, Variant, read_rows


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path: Path, history, write_rows, suffix) -> None:
    records = history()
    result = read_rows(write_rows(records, tmp_path / "data" / f"posts{suffix}"))
    assert result.summary.errors == []
    assert (result.summary.read, result.summary.kept) == (11, 11)
    first = result.rows[0]
    assert first.id == "acme-0"
    assert first.context.keywords == ["sale", "k0"]
    assert first.posted_at == datetime.fromisoformat(records[0]["posted_at"])
    assert first.posted_at.tzinfo is UTC
    assert first.media == (tmp_path / "data" / "img" / "acme-0.png").resolve()
    assert first.kpi_value == 10.0
    assert (first.width, first.height) == (16, 16)
    assert len({row.image_sha256 for row in result.rows}) == 11


def _errors(tmp_path: Path, records, write_rows, suffix: str = ".jsonl"):
    result = read_rows(write_rows(records, tmp_path / "data" / f"rows{suffix}"))
    return result, {error.id: error for error in result.summary.errors}


def test_each_bad_row_is_reported_with_its_reason_and_counted(
    tmp_path: Path, history, write_rows
) -> None:
    records = history({"acme": 8})
    records[0]["media"] = "img/gone.png"
    (tmp_path / "data" / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records[1]["media"] = "img/broken.png"
    records[2]["posted_at"] = "last tuesday"
    records[3]["kpi_value"] = -3
    records[4]["id"] = records[5]["id"]
    del records[6]["kpi_value"]
    result, errors = _errors(tmp_path, records, write_rows)

    assert errors["acme-0"].kind is ErrorKind.MISSING_IMAGE
    assert "gone.png does not exist" in errors["acme-0"].reason
    assert errors["acme-1"].kind is ErrorKind.INVALID_IMAGE
    assert errors["acme-2"].kind is ErrorKind.BAD_TIMESTAMP
    assert "'last tuesday'" in errors["acme-2"].reason
    assert errors["acme-3"].kind is ErrorKind.BAD_KPI
    assert "negative KPI -3" in errors["acme-3"].reason
    # The first occurrence (row 5) is kept; the second (row 6) is the duplicate.
    assert errors["acme-5"].kind is ErrorKind.DUPLICATE_ID
    assert errors["acme-5"].row == 6
    assert "first seen in row 5" in errors["acme-5"].reason
    assert errors["acme-6"].kind is ErrorKind.MISSING_FIELD
    assert "'kpi_value'" in errors["acme-6"].reason

    summary = result.summary
    assert (summary.read, summary.kept) == (8, 2)
    assert [row.id for row in result.rows] == ["acme-5", "acme-7"]
    assert summary.skipped == {
        ErrorKind.MISSING_FIELD: 1,
        ErrorKind.BAD_TIMESTAMP: 1,
        ErrorKind.BAD_KPI: 1,
        ErrorKind.DUPLICATE_ID: 1,
        ErrorKind.MISSING_IMAGE: 1,
        ErrorKind.INVALID_IMAGE: 1,
    }
    assert summary.read == summary.kept + sum(summary.skipped.values())


def test_unreadable_image_file_is_its_own_reason(tmp_path: Path, history, write_rows) -> None:
    records = history({"acme": 2})
    (tmp_path / "data" / "img" / "folder.png").mkdir()
    records[0]["media"] = "img/folder.png"  # exists, but read_bytes() fails
    _, errors = _errors(tmp_path, records, write_rows)
    assert errors["acme-0"].kind is ErrorKind.UNREADABLE_FILE
    assert "could not be read" in errors["acme-0"].reason


def test_images_over_the_limits_are_refused(tmp_path: Path, history, write_rows) -> None:
    path = write_rows(history({"acme": 2}), tmp_path / "data" / "rows.jsonl")
    result = read_rows(path, limits=ImageLimits(max_bytes=50))
    assert {error.kind for error in result.summary.errors} == {ErrorKind.IMAGE_TOO_LARGE}
    assert "the limit is 50" in result.summary.errors[0].reason


def test_missing_csv_column_fails_every_row_by_name(tmp_path: Path, history, write_rows) -> None:
    frame = pl.DataFrame(history({"acme": 3})).drop("posted_at")
    frame = frame.with_columns(pl.col("keywords").list.join(","))
    path = tmp_path / "data" / "rows.csv"
    frame.write_csv(path)
    result = read_rows(path)
    assert result.rows == []
    assert result.summary.skipped == {ErrorKind.MISSING_FIELD: 3}
    assert all("'posted_at'" in error.reason for error in result.summary.errors)


def test_malformed_jsonl_line_is_a_row_error_with_its_line(
    tmp_path: Path, history, write_rows
) -> None:
    path = write_rows(history({"acme": 2}), tmp_path / "data" / "rows.jsonl")
    with path.open("a") as handle:
        handle.write('{"id": "cut-off", \n')
    result = read_rows(path)
    assert result.summary.kept == 2
    (error,) = result.summary.errors
    assert (error.row, error.kind) == (3, ErrorKind.MALFORMED_RECORD)
    assert "not valid JSON" in error.reason


def test_invalid_account_and_timezones(tmp_path: Path, history, write_rows) -> None:
    records = history({"acme": 3})
    records[0]["account"] = "has spaces"
    records[1]["posted_at"] = "2024-03-01T14:00:00+02:00"
    records[2]["posted_at"] = "2024-03-01T12:00:00"  # naive means UTC
    result, errors = _errors(tmp_path, records, write_rows)
    assert errors["acme-0"].kind is ErrorKind.INVALID_FIELD
    assert errors["acme-0"].reason.startswith("account:")
    assert [row.posted_at for row in result.rows] == [datetime(2024, 3, 1, 12, tzinfo=UTC)] * 2


def test_non_numeric_and_infinite_kpis(tmp_path: Path, history, write_rows) -> None:
    records = history({"acme": 2})
    records[0]["kpi_value"] = "many"
    records[1]["kpi_value"] = "inf"
    _, errors = _errors(tmp_path, records, write_rows, ".csv")
    assert errors["acme-0"].kind is errors["acme-1"].kind is ErrorKind.BAD_KPI
    assert "not a number" in errors["acme-0"].reason
    assert "not finite" in errors["acme-1"].reason


def test_stock_variant_uses_title_and_downloads(tmp_path: Path, history, write_rows) -> None:
    records = history({"shutter": 3})
    for record in records:
        record["title"] = record.pop("text")
        del record["kpi_name"]
    records[2]["title"] = ""
    result = read_rows(write_rows(records, tmp_path / "data" / "stock.parquet"))
    assert result.summary.variant is Variant.STOCK
    assert [row.kpi_name for row in result.rows] == ["downloads", "downloads"]
    assert result.rows[0].context.text == "post 0 of shutter"
    (error,) = result.summary.errors
    assert error.kind is ErrorKind.MISSING_FIELD
    assert "'title'" in error.reason


def test_summary_table_names_every_reason(tmp_path: Path, history, write_rows) -> None:
    from rich.console import Console

    records = history({"acme": 3})
    records[0]["kpi_value"] = -1
    result, _ = _errors(tmp_path, records, write_rows)
    console = Console(width=200, record=True)
    console.print(result.summary.table())
    text = console.export_text()
    assert "kept" in text and "skipped: bad_kpi" in text and "negative KPI -1" in text


def test_unsupported_file_type_is_refused_whole(tmp_path: Path) -> None:
    path = tmp_path / "rows.xlsx"
    path.write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_rows(path)
