"""Reading a creative history (JSONL, CSV or Parquet) into validated rows.

Every bad row becomes a ``RowError`` with a reason a person can act on; it is reported and
skipped, never dropped silently, and ``IngestSummary`` counts kept and skipped rows by kind.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.table import Table

from services.common.contracts import Context, KpiName
from services.common.errors import InvalidImage, PayloadTooLarge, validation_message
from services.common.images import decode_image
from services.common.settings import ImageLimits

SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet")
STOCK_KPI = "downloads"


class Variant(StrEnum):
    """Which shape the rows have: brand posts (BoigBench) or stock photos."""

    POSTS = "posts"
    """id, account, posted_at, text, keywords?, media, kpi_name, kpi_value (e.g. likes)."""
    STOCK = "stock"
    """Like posts with ``title`` instead of ``text``; kpi_name defaults to "downloads"."""


class ErrorKind(StrEnum):
    """Why a row was skipped; the summary counts rows per kind."""

    MALFORMED_RECORD = "malformed_record"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_KPI = "bad_kpi"
    DUPLICATE_ID = "duplicate_id"
    MISSING_IMAGE = "missing_image"
    UNREADABLE_FILE = "unreadable_file"
    INVALID_IMAGE = "invalid_image"
    IMAGE_TOO_LARGE = "image_too_large"


class PostRow(BaseModel):
    """One kept row: a creative, where and when it was posted, and its observed KPI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    context: Context = Field(description="Account, text (or stock title), keywords, post time.")
    media: Path = Field(description="The image file, absolute (resolved against the data file).")
    kpi_name: KpiName
    kpi_value: float = Field(ge=0.0, allow_inf_nan=False)
    image_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(ge=1)
    height: int = Field(ge=1)

    @property
    def account(self) -> str:
        return self.context.account

    @property
    def posted_at(self) -> datetime:
        # Always set: rows without a valid post time are refused before a PostRow is built.
        assert self.context.posted_at is not None
        return self.context.posted_at


@dataclass(frozen=True)
class RowError:
    """A skipped row. ``row`` is 1-based: the line in JSONL, the data record in CSV/Parquet."""

    row: int
    id: str | None
    kind: ErrorKind
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f" (id {self.id!r})" if self.id else "")
        return f"{where}: {self.reason}"


@dataclass
class IngestSummary:
    """How many rows were read and kept, and why the others were not."""

    source: Path
    variant: Variant
    read: int = 0
    kept: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def skipped(self) -> dict[ErrorKind, int]:
        counts = Counter(error.kind for error in self.errors)
        return {kind: counts[kind] for kind in ErrorKind if counts[kind]}

    def table(self) -> Table:
        """A rich table: rows read and kept, then each skip reason with its count and a case."""
        table = Table(title=f"Ingest of {self.source.name} ({self.variant.value})")
        table.add_column("rows", justify="left")
        table.add_column("count", justify="right")
        table.add_column("example", justify="left", overflow="fold")
        table.add_row("read", str(self.read), "")
        table.add_row("kept", str(self.kept), "", style="green")
        first_of_kind: dict[ErrorKind, RowError] = {}
        for error in self.errors:
            first_of_kind.setdefault(error.kind, error)
        for kind, count in self.skipped.items():
            table.add_row(f"skipped: {kind.value}", str(count), str(first_of_kind[kind]))
        if self.errors:
            table.caption = "one case per reason; a dataset's rejected.jsonl lists every row"
        return table


@dataclass(frozen=True)
class IngestResult:
    rows: list[PostRow]
    summary: IngestSummary


def read_rows(
    path: Path,
    *,
    variant: Variant | None = None,
    limits: ImageLimits | None = None,
) -> IngestResult:
    """Read and validate every row of ``path``; ``variant`` None means detect from the columns.

    Raises ValueError only for problems with the file as a whole (unknown suffix, unreadable
    container); everything about a single row is a RowError in the summary.
    """
    path = path.resolve()
    limits = limits or ImageLimits()
    records = list(_read_records(path))
    columns = {key for _, record in records if isinstance(record, Mapping) for key in record}
    variant = variant or detect_variant(columns)
    summary = IngestSummary(source=path, variant=variant, read=len(records))
    rows: list[PostRow] = []
    seen_ids: dict[str, int] = {}
    for number, record in records:
        outcome = _validate_record(number, record, variant=variant, base=path.parent)
        if isinstance(outcome, RowError):
            summary.errors.append(outcome)
            continue
        # Duplicates are checked before the image so the report names the first occurrence,
        # which is the row that was kept.
        row_id = outcome["id"]
        if row_id in seen_ids:
            summary.errors.append(
                RowError(
                    number,
                    row_id,
                    ErrorKind.DUPLICATE_ID,
                    f"duplicate id {row_id!r}: first seen in row {seen_ids[row_id]}",
                )
            )
            continue
        image = _check_image(number, row_id, outcome["media"], limits=limits)
        if isinstance(image, RowError):
            summary.errors.append(image)
            continue
        seen_ids[row_id] = number
        digest, width, height = image
        rows.append(PostRow(**outcome, image_sha256=digest, width=width, height=height))
    summary.kept = len(rows)
    return IngestResult(rows=rows, summary=summary)


def detect_variant(columns: set[str]) -> Variant:
    """Stock photo data has a ``title`` and no ``text``; everything else is a post history."""
    return Variant.STOCK if "title" in columns and "text" not in columns else Variant.POSTS


def _read_records(path: Path) -> Iterator[tuple[int, Any]]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path.name}: unsupported file type; expected one of {SUFFIXES}")
    if not path.is_file():
        raise ValueError(f"{path}: no such data file")
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path)
        return
    try:
        # Every CSV column as text: type inference would turn one bad cell into a whole-file
        # failure (or silently coerce it), while we want a reason for that one row.
        frame = pl.read_csv(path, infer_schema=False) if suffix == ".csv" else pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ValueError(f"{path.name}: could not be read as {suffix[1:]}: {exc}") from exc
    yield from enumerate(frame.iter_rows(named=True), start=1)


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    # Line by line with the stdlib rather than polars.read_ndjson: one malformed line must be
    # one row error with its line number, not a failure of the whole file.
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                yield number, json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield number, _Malformed(f"not valid JSON: {exc}")


@dataclass(frozen=True)
class _Malformed:
    reason: str


def _validate_record(
    number: int, record: Any, *, variant: Variant, base: Path
) -> dict[str, Any] | RowError:
    """The row's fields as PostRow keyword arguments (image checks aside), or why not."""
    if isinstance(record, _Malformed):
        return RowError(number, None, ErrorKind.MALFORMED_RECORD, record.reason)
    if not isinstance(record, Mapping):
        return RowError(number, None, ErrorKind.MALFORMED_RECORD, "a row must be a JSON object")
    row_id = _text(record.get("id"))
    text_field = "title" if variant is Variant.STOCK else "text"
    required = ["id", "account", "posted_at", text_field, "media", "kpi_value"]
    if variant is Variant.POSTS:
        required.append("kpi_name")
    missing = [name for name in required if _is_blank(record.get(name))]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        return RowError(number, row_id, ErrorKind.MISSING_FIELD, f"missing field(s) {names}")
    assert row_id is not None

    posted_at = _parse_timestamp(record["posted_at"])
    if isinstance(posted_at, str):
        return RowError(number, row_id, ErrorKind.BAD_TIMESTAMP, posted_at)
    kpi_value = _parse_kpi(record["kpi_value"])
    if isinstance(kpi_value, str):
        return RowError(number, row_id, ErrorKind.BAD_KPI, kpi_value)
    kpi_name = _text(record.get("kpi_name")) or STOCK_KPI
    keywords = _parse_keywords(record.get("keywords"))
    if isinstance(keywords, str):
        return RowError(number, row_id, ErrorKind.INVALID_FIELD, keywords)
    media_text = _text(record["media"])
    assert media_text is not None
    try:
        context = Context(
            account=_text(record["account"]) or "",
            text=_text(record[text_field]) or "",
            keywords=keywords,
            posted_at=posted_at,
        )
        fields = {
            "id": row_id,
            "context": context,
            "media": (base / media_text).resolve(),
            "kpi_name": kpi_name,
            "kpi_value": kpi_value,
        }
        # Validate everything but the image fields now, so a bad id or kpi_name is reported
        # as such rather than surfacing after the (slower) image decode.
        PostRow.model_validate(
            {**fields, "image_sha256": "0" * 64, "width": 1, "height": 1}, strict=False
        )
    except ValidationError as exc:
        # A row is flat: its context fields are columns of their own, named without "context."
        message = validation_message(exc, omit=("context",), whole="row")
        return RowError(number, row_id, ErrorKind.INVALID_FIELD, message)
    return fields


def _check_image(
    number: int, row_id: str, media: Path, *, limits: ImageLimits
) -> tuple[str, int, int] | RowError:
    if not media.exists():
        return RowError(number, row_id, ErrorKind.MISSING_IMAGE, f"image {media} does not exist")
    try:
        data = media.read_bytes()
    except OSError as exc:
        reason = f"image {media} could not be read: {exc.strerror or exc}"
        return RowError(number, row_id, ErrorKind.UNREADABLE_FILE, reason)
    try:
        image = decode_image(data, limits=limits, what=f"image {media.name}")
    except PayloadTooLarge as exc:
        return RowError(number, row_id, ErrorKind.IMAGE_TOO_LARGE, exc.message)
    except InvalidImage as exc:
        return RowError(number, row_id, ErrorKind.INVALID_IMAGE, exc.message)
    return hashlib.sha256(data).hexdigest(), image.width, image.height


def _parse_timestamp(value: Any) -> datetime | str:
    """An aware UTC datetime, or the reason the value is not one. Naive means UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return f"bad timestamp {value!r}: expected ISO-8601, e.g. 2024-05-01T12:00:00Z"
    else:
        return f"bad timestamp {value!r}: expected an ISO-8601 string"
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _parse_kpi(value: Any) -> float | str:
    """A finite non-negative float, or the reason the value is not one."""
    if isinstance(value, bool):
        return f"KPI {value!r} is not a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"KPI {value!r} is not a number"
    if not math.isfinite(number):
        return f"KPI {value!r} is not finite"
    if number < 0:
        return f"negative KPI {number:g}: KPI counts must be >= 0"
    return number


def _parse_keywords(value: Any) -> list[str] | str:
    """A list as is; a string (CSV) split on commas; absent means none."""
    if value is None:
        return []
    if isinstance(value, str):
        return [word.strip() for word in value.split(",") if word.strip()]
    if isinstance(value, list | tuple | pl.Series):
        words = [str(word).strip() for word in value if word is not None]
        return [word for word in words if word]
    return f"keywords must be a list or a comma-separated string, not {type(value).__name__}"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        # A numeric id read back from Parquet/JSON: 17.0 should stay "17".
        return str(int(value))
    text = str(value).strip()
    return text or None


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())
