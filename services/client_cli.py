"""`boig score|describe|generate|jobs|feedback`: the public API from the command line.

Each command goes through ``boig_client`` to the gateway at ``--url`` (BOIG_URL) with ``--key``
(BOIG_API_KEY), as a marketing app would. An error answer prints as its message and type (and
request id, for the logs), never as a traceback.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from boig_client import BoigClient, BoigError
    from boig_client.contracts import FeedbackRecord, JobStatus, ScoreResponse

DEFAULT_URL = "http://127.0.0.1:8100"
MAX_EDITS_SHOWN = 3

console = Console(highlight=False)
# Messages are never broken across lines: a URL or a request id must stay copyable.
errors = Console(stderr=True, highlight=False, soft_wrap=True)

jobs_app = typer.Typer(help="Generation jobs: show, wait for, cancel.", no_args_is_help=True)
feedback_app = typer.Typer(
    help="The KPIs creatives observed once posted: send one, list them.", no_args_is_help=True
)

Url = Annotated[
    str,
    typer.Option("--url", envvar="BOIG_URL", help="The gateway's base URL.", show_envvar=True),
]
Key = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="BOIG_API_KEY",
        help="API key (an operator creates one: `boig gateway keys create --name NAME`).",
        show_default=False,
        show_envvar=True,
    ),
]
RequestFile = Annotated[
    Path | None,
    typer.Option(
        "--request",
        exists=True,
        dir_okay=False,
        help='JSON with "context" and "target", e.g. services/demo/samples/request.json; '
        "the options below override its fields.",
    ),
]
Account = Annotated[str | None, typer.Option(help="Brand account the creative is posted on.")]
Text = Annotated[str | None, typer.Option(help="Post text or title.")]
Keywords = Annotated[
    list[str] | None, typer.Option("--keyword", help="A keyword of the post (repeatable).")
]
PostedAt = Annotated[
    str | None, typer.Option(help="When it is (was) posted, ISO 8601, e.g. 2026-06-12T09:00Z.")
]
Kpi = Annotated[str | None, typer.Option(help="KPI name (default: likes).", show_default=False)]
Level = Annotated[
    Literal["low", "medium", "high"] | None,
    typer.Option(help="Target KPI level (default: high).", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]
Out = Annotated[Path, typer.Option(help="Folder the images are written to.", file_okay=False)]
WaitTimeout = Annotated[
    float | None, typer.Option(min=0, help="Stop waiting after this many seconds.")
]


def register(app: typer.Typer) -> None:
    """Add the API commands to the `boig` app."""
    app.command("score")(score)
    app.command("describe")(describe)
    app.command("generate")(generate)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(feedback_app, name="feedback")


@contextmanager
def _gateway(url: str, key: str | None) -> Iterator[BoigClient]:
    """A client of the gateway; an API error raised in the block ends the command with its
    message (exit 1)."""
    try:
        from boig_client import BoigClient, BoigError
    except ImportError as exc:
        errors.print("the API commands need the Python client: pip install ./clients/python")
        raise typer.Exit(2) from exc
    if not key:
        errors.print(
            "no API key: pass --key or set BOIG_API_KEY (an operator creates one with "
            "`boig gateway keys create --name NAME`)"
        )
        raise typer.Exit(2)
    try:
        with BoigClient(url, key) as client:
            yield client
    except BoigError as exc:
        errors.print(_error_line(exc), markup=False)
        hint = _hint(exc, url)
        if hint:
            errors.print(hint, markup=False)
        raise typer.Exit(1) from exc
    except (TimeoutError, OSError) as exc:
        errors.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from exc


def _error_line(exc: BoigError) -> str:
    where = f"{exc.type}, request {exc.request_id}" if exc.request_id else exc.type
    return f"error: {exc.message} ({where})"


def _hint(exc: BoigError, url: str) -> str | None:
    import httpx
    from boig_client import Overloaded, RateLimited, Unauthorized, UpstreamError

    if isinstance(exc, Unauthorized):
        return "check --key / BOIG_API_KEY: the key may be mistyped or revoked"
    if isinstance(exc, RateLimited | Overloaded):
        wait = f" in {math.ceil(exc.retry_after)} s" if exc.retry_after else " later"
        return f"the gateway is busy for this key: try again{wait}"
    if isinstance(exc, UpstreamError) and isinstance(exc.__cause__, httpx.TransportError):
        return f"is the gateway running at {url}? (--url / BOIG_URL)"
    return None


def _request(
    request_file: Path | None,
    *,
    account: str | None,
    text: str | None,
    keywords: list[str] | None,
    posted_at: str | None,
    kpi: str | None = None,
    level: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The context and target: the request file's, with the options given over them."""
    base: dict[str, Any] = {}
    if request_file is not None:
        try:
            base = json.loads(request_file.read_text())
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"{request_file}: {exc}", param_hint="--request") from exc
        if not isinstance(base, dict):
            raise typer.BadParameter(f"{request_file}: not a JSON object", param_hint="--request")
    context = dict(base.get("context") or {})
    target = dict(base.get("target") or {})
    for name, value in (("account", account), ("text", text), ("posted_at", posted_at)):
        if value is not None:
            context[name] = value
    if keywords:
        context["keywords"] = keywords
    for name, value in (("name", kpi), ("level", level)):
        if value is not None:
            target[name] = value
    if "account" not in context:
        raise typer.BadParameter("give --account, or --request FILE with a context")
    return context, target


def score(
    files: Annotated[
        list[Path],
        typer.Argument(
            exists=True, dir_okay=False, help="Creatives: PNG, JPEG, WebP or GIF files."
        ),
    ],
    request_file: RequestFile = None,
    account: Account = None,
    text: Text = None,
    keyword: Keywords = None,
    posted_at: PostedAt = None,
    kpi: Kpi = None,
    level: Level = None,
    reward: Annotated[
        Literal["match", "likelihood", "contrastive"], typer.Option(help="How to score.")
    ] = "match",
    edits: Annotated[
        int,
        typer.Option(min=0, max=10, help="Suggest up to this many edits per creative."),
    ] = 0,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Rank creatives for a context and KPI target: a table of totals, their breakdown and
    (with --edits) what to change first."""
    context, target = _request(
        request_file,
        account=account,
        text=text,
        keywords=keyword,
        posted_at=posted_at,
        kpi=kpi,
        level=level,
    )
    with _gateway(url, key) as boig, errors.status(f"scoring {len(files)} creatives"):
        response = boig.score(context, target, files, reward=reward, max_edits=edits)
    if as_json:
        typer.echo(response.model_dump_json(indent=2))
        return
    _print_ranking(response, edits=edits)


def _print_ranking(response: ScoreResponse, *, edits: int) -> None:
    for description in response.targets:
        console.print(f"[bold]target description ({description.level.value})[/bold]")
        console.print(description.text, markup=False)
    parts = list(response.weights) or sorted(
        {part for result in response.results for part in result.breakdown}
    )
    table = Table(title=f"ranking ({response.reward} reward)")
    table.add_column("rank", justify="right")
    table.add_column("creative")
    table.add_column("total", justify="right")
    for part in parts:
        weight = response.weights.get(part)
        table.add_column(f"{part} ×{weight:g}" if weight is not None else part, justify="right")
    if edits:
        table.add_column("top edits (reward gain)")
    for result in response.results:
        row = [str(result.rank), result.id, f"{result.total:.3f}"]
        row += [_number(result.breakdown.get(part)) for part in parts]
        if edits:
            shown = result.edits[:MAX_EDITS_SHOWN]
            row.append("\n".join(f"{edit.summary} (+{edit.gain:.3f})" for edit in shown) or "-")
        table.add_row(*row)
    console.print(table)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def describe(
    request_file: RequestFile = None,
    account: Account = None,
    text: Text = None,
    keyword: Keywords = None,
    posted_at: PostedAt = None,
    kpi: Kpi = None,
    level: Level = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """How an image for a context should look to reach a KPI level: a creative brief."""
    context, target = _request(
        request_file,
        account=account,
        text=text,
        keywords=keyword,
        posted_at=posted_at,
        kpi=kpi,
        level=level,
    )
    with _gateway(url, key) as boig, errors.status("describing"):
        response = boig.describe(context, target)
    if as_json:
        typer.echo(response.model_dump_json(indent=2))
        return
    console.print(response.text, markup=False)
    errors.print(f"by {response.model.name}@{response.model.version}", markup=False)


def generate(
    request_file: RequestFile = None,
    account: Account = None,
    text: Text = None,
    keyword: Keywords = None,
    posted_at: PostedAt = None,
    kpi: Kpi = None,
    level: Level = None,
    count: Annotated[int, typer.Option(min=1, help="Images returned.")] = 1,
    strategy: Annotated[
        Literal["prompt", "best_of_n", "boigsd"] | None,
        typer.Option(help="How to draw the images (default: the generator's)."),
    ] = None,
    candidates: Annotated[
        int | None, typer.Option(min=1, help="best_of_n: images generated and scored.")
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Denoising steps.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Image i uses seed + i.")] = None,
    width: Annotated[int | None, typer.Option(help="Pixels, a multiple of 8.")] = None,
    height: Annotated[int | None, typer.Option(help="Pixels, a multiple of 8.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="The same key and request return the same job.")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the job with a progress bar and write its images.")
    ] = False,
    out: Out = Path("boig-images"),
    timeout: WaitTimeout = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Start a generation job; with --wait, follow it and write its images to --out."""
    context, target = _request(
        request_file,
        account=account,
        text=text,
        keywords=keyword,
        posted_at=posted_at,
        kpi=kpi,
        level=level,
    )
    with _gateway(url, key) as boig:
        accepted = boig.generate(
            context,
            target,
            count=count,
            strategy=strategy,
            candidates=candidates,
            steps=steps,
            seed=seed,
            width=width,
            height=height,
            idempotency_key=idempotency_key,
        )
        if not wait:
            console.print(f"job {accepted.job_id} {accepted.state.value}", markup=False)
            errors.print(f"follow it with `boig jobs wait {accepted.job_id}`", markup=False)
            return
        status = boig.wait(accepted, timeout=timeout)
        _finish(boig, status, out)


def _finish(boig: BoigClient, status: JobStatus, out: Path) -> None:
    """Write a finished job's images; a canceled job ends the command with exit 1."""
    if status.state.value != "succeeded":
        errors.print(f"job {status.job_id} {status.state.value}; no images", markup=False)
        raise typer.Exit(1)
    out.mkdir(parents=True, exist_ok=True)
    table = Table("rank", "reward", "seed", "file")
    for image in status.images:
        path = out / f"{image.id}.png"
        path.write_bytes(boig.image(image))
        table.add_row(str(image.rank), _number(image.reward), str(image.seed), str(path))
    console.print(table)
    if status.outcome is not None:
        console.print(f"prompt: {status.outcome.prompt}", markup=False)


@jobs_app.command("show")
def show_job(job_id: str, as_json: AsJson = False, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """A job's state, progress and images."""
    with _gateway(url, key) as boig:
        status = boig.job(job_id)
    if as_json:
        typer.echo(status.model_dump_json(indent=2))
        return
    line = f"job {status.job_id} {status.state.value}"
    if status.queue_position:
        line += f", queue position {status.queue_position}"
    if status.progress is not None:
        line += f", {status.progress.stage} {status.progress.step}/{status.progress.total}"
    if status.error is not None:
        line += f": {status.error.message} ({status.error.type})"
    console.print(line, markup=False)
    for image in status.images:
        console.print(
            f"  {image.rank}. {image.id}  reward {_number(image.reward)}  seed {image.seed}",
            markup=False,
        )


@jobs_app.command("wait")
def wait_job(
    job_id: str,
    out: Out = Path("boig-images"),
    timeout: WaitTimeout = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Follow a job with a progress bar until it ends, then write its images to --out."""
    with _gateway(url, key) as boig:
        _finish(boig, boig.wait(job_id, timeout=timeout), out)


@jobs_app.command("cancel")
def cancel_job(job_id: str, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """Cancel a job: a queued one at once, a running one at its next denoising step."""
    with _gateway(url, key) as boig:
        status = boig.cancel(job_id)
    requested = " (stopping at its next step)" if status.state.value == "running" else ""
    console.print(f"job {status.job_id} {status.state.value}{requested}", markup=False)


@feedback_app.command("send")
def send_feedback(
    kpi: Annotated[str, typer.Option(help="KPI name, e.g. likes.")],
    value: Annotated[float, typer.Option(min=0, help="The observed KPI.")],
    image_id: Annotated[
        str | None, typer.Option(help="An image a job of this key generated.")
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Or the creative's image file."),
    ] = None,
    request_file: RequestFile = None,
    account: Account = None,
    text: Text = None,
    keyword: Keywords = None,
    posted_at: PostedAt = None,
    correction: Annotated[
        bool, typer.Option(help="Replace the value recorded for this creative and KPI.")
    ] = False,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """Record the KPI a creative observed once posted (--image-id, or --image with its
    context: --account and --posted-at at least)."""
    if (image_id is None) == (image is None):
        raise typer.BadParameter("give --image-id or --image (one of them)")
    given = request_file or account or text or keyword or posted_at
    context = None
    if given:
        context, _ = _request(
            request_file, account=account, text=text, keywords=keyword, posted_at=posted_at
        )
    with _gateway(url, key) as boig:
        record = boig.feedback(
            kpi, value, image_id=image_id, image=image, context=context, correction=correction
        )
    console.print(_feedback_line(record), markup=False)


def _feedback_line(record: FeedbackRecord) -> str:
    return (
        f"{record.id}  {record.context.account}  {record.kpi_name} = {record.kpi_value:g}  "
        f"creative {record.creative_sha256[:12]}  revision {record.revision}"
    )


@feedback_app.command("list")
def list_feedback(
    account: Annotated[str | None, typer.Option(help="Only this account's.")] = None,
    kpi: Annotated[str | None, typer.Option(help="Only this KPI's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    cursor: Annotated[str | None, typer.Option(help="Where the previous page ended.")] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    key: Key = None,
) -> None:
    """This key's feedback, newest first."""
    with _gateway(url, key) as boig:
        page = boig.feedback_page(account=account, kpi_name=kpi, limit=limit, cursor=cursor)
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    table = Table("id", "account", "kpi", "value", "posted", "creative", "revision")
    for record in page.items:
        posted = record.context.posted_at
        table.add_row(
            record.id,
            record.context.account,
            record.kpi_name,
            f"{record.kpi_value:g}",
            f"{posted:%Y-%m-%d %H:%M}" if posted else "-",
            record.creative_sha256[:12],
            str(record.revision),
        )
    console.print(table)
    if page.next_cursor:
        errors.print(f"more: --cursor {page.next_cursor}", markup=False)
