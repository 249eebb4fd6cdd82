"""The playground page in headless Chromium (Debian's chromium and chromedriver, driven by
Selenium) against the whole stack as processes on loopback: the real featurizer, describer,
scorer, generator worker (tiny random SD) and gateway. What the page shows is checked against
what the API answers for the same request, and its screenshots are looked at: not blank, the
ranking table in them.

Screenshots are kept under pytest's temporary directory (``--basetemp`` to choose it), in
``playground-screenshots*/``.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest
from PIL import Image, ImageStat

from services.common.contracts import (
    CheckpointEvaluation,
    CheckpointInfo,
    FeedbackFold,
    MetricDifference,
)
from services.common.db import Database
from services.common.retraining import NewDecision, RetrainLedger
from services.demo.__main__ import SAMPLES, create_api_key
from services.tooling.models import prepare_all
from services.tooling.stack import LocalStack, local_stack
from tests.servers import server_missing

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

T = TypeVar("T")

VIEWPORT = (1280, 1600)
SCORE_TIMEOUT = 300.0  # the first /v1/score waits for BoigLLM's description on 2 cores
JOB_TIMEOUT = 300.0
REQUEST: dict[str, Any] = json.loads((SAMPLES / "request.json").read_text())
SAMPLE_FILES = sorted(SAMPLES.glob("*.*g"))


# --- the browser and the stack --------------------------------------------------------------


def chromium_binaries() -> tuple[str, str]:
    """Debian's chromium and its chromedriver (same version by construction): no browser is
    ever downloaded."""
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        server_missing(
            "Chromium or chromedriver is not installed "
            "(apt-get install chromium chromium-driver; .ci/run does)"
        )
    return browser, driver


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    browser, chromedriver = chromium_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        "--lang=en-US",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    # The console, to find CSP refusals and script errors.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    # A driver path given: Selenium Manager is not asked for (nor downloads) anything.
    service = Service(executable_path=chromedriver, log_output=str(log))
    chrome = webdriver.Chrome(options=options, service=service)
    chrome.set_script_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="module")
def stack(driver: WebDriver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # The browser first: without Chromium the module fails before starting five services.
    models = prepare_all(world_sd=False, boigllm=False, log=False)
    tiny = {"BOIG_GENERATOR_MODEL_PATH": str(models["tiny-diffusion"])}
    with local_stack(tmp_path_factory.mktemp("playground-stack"), extra_env=tiny) as running:
        yield running


@pytest.fixture(scope="module")
def key(stack: LocalStack) -> str:
    return create_api_key(stack.database_url)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("playground-screenshots")


@pytest.fixture
def page(driver: WebDriver, stack: LocalStack) -> Iterator[Playground]:
    playground = Playground(driver, stack)
    yield playground
    # Whatever a test left in the console: a refused resource or a script error is a defect.
    problems = playground.console_errors()
    assert problems == [], problems


# --- the page ------------------------------------------------------------------------------


class Playground:
    """The page as a user works it, plus what a test reads back from the DOM."""

    def __init__(self, driver: WebDriver, stack: LocalStack) -> None:
        self.driver = driver
        self.stack = stack
        self.expected_console: list[str] = []

    def open(self, key: str) -> None:
        self.driver.get(f"{self.stack.url('gateway')}/playground")
        self.wait(
            lambda: self.driver.execute_script("return document.documentElement.dataset.ready"),
            10,
            "the page's script did not start",
        )
        self.type("#api-key", key)

    def find(self, selector: str) -> WebElement:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def type(self, selector: str, text: str) -> None:
        field = self.find(selector)
        field.clear()
        if text:
            field.send_keys(text)

    def choose(self, selector: str, value: str) -> None:
        from selenium.webdriver.support.select import Select

        Select(self.find(selector)).select_by_value(value)

    def click(self, selector: str) -> None:
        self.find(selector).click()

    def text(self, selector: str) -> str:
        return str(self.find(selector).text)

    def shown(self, selector: str) -> bool:
        return bool(self.find(selector).is_displayed())

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def fill_context(self, request: dict[str, Any]) -> None:
        context = request["context"]
        self.type("#account", context["account"])
        self.type("#post-text", context.get("text", ""))
        self.type("#keywords", ", ".join(context.get("keywords", [])))
        self.type("#kpi-name", request["target"]["name"])
        self.choose("#kpi-level", request["target"]["level"])

    def choose_files(self, paths: list[Path]) -> None:
        # chromedriver takes several files for one <input multiple> as lines of one string.
        self.find("#score-files").send_keys("\n".join(str(path) for path in paths))

    def wait(self, condition: Callable[[], T | None], timeout: float, what: str) -> T:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            value: T = WebDriverWait(self.driver, timeout, poll_frequency=0.25).until(
                lambda _: condition()
            )
        except TimeoutException:
            error = self.js("return document.getElementById('error').innerText")
            pytest.fail(
                f"{what} within {timeout:.0f} s; error box: {error!r}; console: "
                f"{self.console_errors()}\ngateway log:\n{self.stack.log('gateway')[-3000:]}"
            )
        return value

    def console_errors(self) -> list[str]:
        entries = self.driver.get_log("browser")
        return [
            entry["message"]
            for entry in entries
            if entry["level"] == "SEVERE"
            and not any(expected in entry["message"] for expected in self.expected_console)
        ]

    def screenshot(self, path: Path) -> Image.Image:
        png = self.driver.get_screenshot_as_png()
        path.write_bytes(png)
        return Image.open(io.BytesIO(png)).convert("RGB")

    def box(self, selector: str) -> tuple[int, int, int, int]:
        """The element's box in screenshot pixels (left, top, right, bottom)."""
        rect = self.js(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
            "const s = window.devicePixelRatio;"
            "return [r.left * s, r.top * s, r.right * s, r.bottom * s];",
            selector,
        )
        left, top, right, bottom = (round(value) for value in rect)
        return left, top, right, bottom


def assert_not_blank(image: Image.Image, path: Path) -> None:
    """A real page: many colours, and far from one flat colour."""
    colours = image.getcolors(maxcolors=1 << 24) or []
    assert len(colours) > 256, f"{path}: {len(colours)} colours"
    spread = ImageStat.Stat(image).stddev
    assert min(spread) > 10, f"{path}: nearly uniform (stddev {spread})"


def visible_part(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The part of ``image`` inside ``box``, which must be (nearly) all in it."""
    left, top, right, bottom = box
    clipped = (max(0, left), max(0, top), min(image.width, right), min(image.height, bottom))
    area = (right - left) * (bottom - top)
    shown = max(0, clipped[2] - clipped[0]) * max(0, clipped[3] - clipped[1])
    assert area > 0 and shown >= 0.9 * area, f"{box} is not in the {image.size} screenshot"
    return image.crop(clipped)


def score_api(stack: LocalStack, key: str, spec: dict[str, Any]) -> dict[str, Any]:
    files = [("creatives", (path.name, path.read_bytes(), "image/*")) for path in SAMPLE_FILES]
    response = httpx.post(
        f"{stack.url('gateway')}/v1/score",
        headers={"Authorization": f"Bearer {key}"},
        data={"request": json.dumps(spec)},
        files=files,
        timeout=SCORE_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def page_context() -> dict[str, Any]:
    """The context as the page sends it: the sample's, less the post time it has no field
    filled for here (a date could change the description BoigLLM writes)."""
    return {name: REQUEST["context"][name] for name in ("account", "text", "keywords")}


# --- the tests -----------------------------------------------------------------------------


def test_a_wrong_key_shows_the_gateways_error_and_no_ranking(
    page: Playground, stack: LocalStack
) -> None:
    page.expected_console.append("status of 401")
    page.open("")
    page.fill_context(REQUEST)
    page.choose_files(SAMPLE_FILES[:1])
    page.click("#score-submit")
    page.wait(lambda: page.shown("#error"), 10, "no error box without a key")
    assert page.text("#error-type") == "no_key"

    wrong = "boig_00000000_not-the-secret"
    page.type("#api-key", wrong)
    page.click("#score-submit")
    page.wait(lambda: page.text("#error-type") == "unauthorized", 30, "no 401 shown")
    answer = httpx.post(
        f"{stack.url('gateway')}/v1/score", headers={"Authorization": f"Bearer {wrong}"}
    ).json()["error"]
    assert page.text("#error-message") == answer["message"]
    assert page.text("#error-request").startswith("request id ")
    assert not page.shown("#score-result")
    # The key is kept for this tab only, as typed.
    stored = page.js("return sessionStorage.getItem('boig.playground.key')")
    assert stored == wrong
    assert page.js("return localStorage.length") == 0
    page.click("#error-close")
    assert not page.shown("#error")


def test_scoring_shows_the_ranking_with_breakdowns_edits_and_the_target(
    page: Playground, stack: LocalStack, key: str, screenshots: Path
) -> None:
    page.open(key)
    page.fill_context(REQUEST)
    page.choose("#reward", "match")
    page.type("#max-edits", "3")
    page.choose_files(SAMPLE_FILES)
    assert page.js("return document.querySelectorAll('#score-previews img').length") == len(
        SAMPLE_FILES
    )
    page.click("#score-submit")
    rows: list[dict[str, Any]] = page.wait(
        lambda: (
            found
            if len(found := page.js(READ_RANKING)) == len(SAMPLE_FILES)
            and all(row["thumbnail"] for row in found)
            else None
        ),
        SCORE_TIMEOUT,
        "no ranking of every creative with its thumbnail",
    )
    assert not page.shown("#error")

    answer = score_api(
        stack,
        key,
        {"context": page_context(), "target": REQUEST["target"], "reward": "match", "max_edits": 3},
    )
    results = answer["results"]
    assert [row["rank"] for row in rows] == [str(rank) for rank in range(1, len(rows) + 1)]
    assert [Path(row["name"]).stem for row in rows] == [item["id"] for item in results]
    totals = [float(row["total"]) for row in rows]
    assert totals == sorted(totals, reverse=True)
    for row, item in zip(rows, results, strict=True):
        assert float(row["total"]) == pytest.approx(item["total"], abs=5e-4)
        assert row["components"] == list(item["breakdown"]), row
        assert row["meters"] == len(item["breakdown"]) > 0
        assert len(row["edits"]) == len(item["edits"])
        for shown, edit in zip(row["edits"], item["edits"], strict=True):
            assert shown.startswith(edit["summary"]), (shown, edit)
            assert float(shown.rpartition("→ ")[2]) == pytest.approx(edit["reward"], abs=5e-4)
        assert row["with_edits"] == (item["total_with_edits"] is not None)
    assert any(row["edits"] for row in rows), "the samples are none of them the brief"
    target = answer["targets"][0]
    brief = "return document.querySelector(\".target[data-level='high'] pre.brief\").textContent"
    assert page.js(brief) == target["text"]
    assert all(name in page.text("#score-weights") for name in answer["weights"])

    page.js("document.getElementById('ranking').scrollIntoView({block: 'start'})")
    path = screenshots / "score.png"
    image = page.screenshot(path)
    assert image.size == tuple(page.js(VIEWPORT_PIXELS)), image.size
    assert_not_blank(image, path)
    table = visible_part(image, page.box("#ranking"))
    assert table.height > 100 * len(rows) * 0.8, (table.size, path)
    # The table, not an empty panel: the creatives' thumbnails and the bars are in it.
    assert len(table.getcolors(maxcolors=1 << 24) or []) > 256, path
    for row in range(1, len(rows) + 1):
        thumbnail = visible_part(image, page.box(f"#ranking tbody tr:nth-child({row}) img"))
        inside = thumbnail.crop((2, 2, thumbnail.width - 2, thumbnail.height - 2))  # no border
        assert max(ImageStat.Stat(inside).stddev) > 5, f"thumbnail {row} is flat in {path}"
    visible_part(image, page.box("#ranking thead"))


VIEWPORT_PIXELS = (
    "return [innerWidth, innerHeight].map((side) => Math.round(side * devicePixelRatio))"
)
READ_RANKING = """
return [...document.querySelectorAll('#ranking tbody tr')].map((tr) => {
  const img = tr.querySelector('.creative-cell img');
  return {
    rank: tr.querySelector('.rank').textContent,
    name: tr.querySelector('.name').textContent,
    total: tr.querySelector('.total .value').textContent,
    with_edits: tr.querySelector('.total .with-edits') !== null,
    thumbnail: img !== null && img.complete && img.naturalWidth > 0 && img.src.startsWith('blob:'),
    components: [...tr.querySelectorAll('.breakdown .component')].map((c) => c.textContent),
    meters: tr.querySelectorAll('.breakdown meter').length,
    edits: [...tr.querySelectorAll('ol.edits li')].map((li) => li.textContent),
  };
});
"""


def test_a_generate_job_shows_its_progress_and_then_its_images(
    page: Playground, stack: LocalStack, key: str, screenshots: Path
) -> None:
    page.open(key)
    page.fill_context(REQUEST)
    page.click("#tab-generate")
    page.choose("#strategy", "prompt")
    page.type("#count", "2")
    page.type("#steps", "4")
    page.type("#seed", "7")
    # Every state the page shows, in order, as the user would have seen it.
    page.js(
        "window.seenStates = [];"
        "const state = document.getElementById('job-state');"
        "new MutationObserver(() => {"
        "  const now = state.textContent;"
        "  if (now && window.seenStates[window.seenStates.length - 1] !== now)"
        "    window.seenStates.push(now);"
        "}).observe(state, {childList: true, characterData: true, subtree: true});"
    )
    page.click("#generate-submit")
    final = page.wait(
        lambda: state if (state := page.text("#job-state")) in FINAL_STATES else None,
        JOB_TIMEOUT,
        "the job did not end",
    )
    assert final == "succeeded", page.text("#error")
    seen = page.js("return window.seenStates")
    assert seen[0] == "queued" and seen[-1] == "succeeded", seen
    assert page.js("const p = document.getElementById('job-progress'); return p.value === p.max")
    assert not page.shown("#job-cancel")

    job_id = page.text("#job-id")
    status = httpx.get(
        f"{stack.url('gateway')}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert status["state"] == "succeeded" and len(status["images"]) == 2
    assert status["request"]["strategy"] == "prompt" and status["request"]["seed"] == 7
    sent = {name: value for name, value in status["request"]["context"].items() if value}
    assert sent == page_context()
    shown = page.wait(
        lambda: (
            found
            if len(found := page.js(READ_IMAGES)) == 2 and all(image["loaded"] for image in found)
            else None
        ),
        30,
        "the job's images were not shown",
    )
    for figure, image in zip(shown, sorted(status["images"], key=lambda i: i["rank"]), strict=True):
        assert figure["id"] == image["id"]
        assert (figure["width"], figure["height"]) == (image["width"], image["height"])
        assert figure["caption"].startswith(f"#{image['rank']} · reward {image['reward']:.3f}")
    prompt = page.js("return document.querySelector('#job-outcome pre.prompt').textContent")
    assert prompt == status["outcome"]["prompt"]

    path = screenshots / "generate.png"
    assert_not_blank(page.screenshot(path), path)


FINAL_STATES = {"succeeded", "failed", "canceled"}
READ_IMAGES = """
return [...document.querySelectorAll('#job-images figure')].map((figure) => {
  const img = figure.querySelector('img');
  return {
    id: figure.dataset.id,
    loaded: img.complete && img.naturalWidth > 0 && img.src.startsWith('blob:'),
    width: img.naturalWidth,
    height: img.naturalHeight,
    caption: figure.querySelector('figcaption').textContent,
  };
});
"""


def test_checkpoints_mark_the_served_one_and_show_each_decisions_evaluation(
    page: Playground, stack: LocalStack, key: str, screenshots: Path
) -> None:
    served, earlier = "20260502T000000Z-0000beef", "20260401T000000Z-0000abcd"
    database = Database(stack.database_url)
    try:
        record_registry(RetrainLedger(database), served=served, earlier=earlier)
    finally:
        database.dispose()

    page.open(key)
    page.click("#tab-checkpoints")  # loads the default model's list by itself
    versions = page.wait(
        lambda: (
            found
            if len(found := page.js(READ_CHECKPOINTS)) == 2 and len(page.js(READ_DECISIONS)) == 2
            else None
        ),
        30,
        "the checkpoints and decisions were not listed",
    )
    assert versions == [
        {"version": served, "current": True, "serving": True, "metrics": ["heldout_loss 3.0000"]},
        {
            "version": earlier,
            "current": False,
            "serving": False,
            "metrics": ["heldout_loss 4.3200"],
        },
    ]
    rejected, promoted = page.js(READ_DECISIONS)  # newest first
    assert rejected["action"] == "reject" and rejected["evaluation"] == []
    assert rejected["reason"] == "too few held-out posts (3 < 10)"
    assert promoted["action"] == "promote"
    assert promoted["reason"] == "better beyond the 95% interval"
    assert promoted["evaluation"] == [
        ["heldout_loss", "4.3200", "3.0000", "+1.3200", "[+1.0400, +1.6000]", "better"],
        ["level_logloss", "1.1000", "1.0500", "+0.0500", "[-0.0200, +0.1200]", ""],
    ]
    assert "22 held-out posts" in promoted["summary"] and "95%" in promoted["summary"]
    assert "4 new" in promoted["feedback"]

    path = screenshots / "checkpoints.png"
    assert_not_blank_or_plain_text(page.screenshot(path), path)


READ_CHECKPOINTS = """
return [...document.querySelectorAll('#checkpoint-table tbody tr[data-version]')].map((tr) => ({
  version: tr.dataset.version,
  current: tr.classList.contains('current'),
  serving: tr.querySelector('.badge.serving') !== null,
  metrics: [...tr.querySelectorAll('.metrics li')].map((li) => li.textContent),
}));
"""
READ_DECISIONS = """
return [...document.querySelectorAll('#decisions article.decision')].map((card) => {
  const summary = card.querySelector('.evaluation p');
  const feedback = [...card.querySelectorAll('p.hint')].map((p) => p.textContent).join(' ');
  return {
    action: card.dataset.action,
    reason: card.querySelector('p.reason').textContent,
    summary: summary ? summary.textContent : '',
    feedback,
    evaluation: [...card.querySelectorAll('.evaluation tbody tr')].map((tr) => [
      ...[...tr.children].map((td) => td.textContent),
      tr.querySelector('td.improvement').classList.contains('better') ? 'better' : '',
    ]),
  };
});
"""


def assert_not_blank_or_plain_text(image: Image.Image, path: Path) -> None:
    """A page of text and tables: not one flat colour, and more than a couple of them
    (anti-aliased text alone gives dozens)."""
    colours = image.getcolors(maxcolors=1 << 24) or []
    assert len(colours) > 32, f"{path}: {len(colours)} colours"
    assert max(ImageStat.Stat(image).stddev) > 5, path


def record_registry(ledger: RetrainLedger, *, served: str, earlier: str) -> None:
    """What the training worker records after a promotion and a later rejection."""
    published = datetime(2026, 5, 2, tzinfo=UTC)

    def version(name: str, when: datetime, *, current: bool, loss: float) -> CheckpointInfo:
        return CheckpointInfo(
            name="boigllm",
            version=name,
            kind="boigllm-lora",
            created_at=when,
            current=current,
            base_model="smollm2-135m@base",
            dataset_version="v2",
            dataset_sha256="c" * 64,
            metrics={"heldout_loss": loss},
        )

    ledger.record_versions(
        "boigllm",
        [
            version(served, published, current=True, loss=3.0),
            version(earlier, published - timedelta(days=31), current=False, loss=4.32),
        ],
    )
    evaluation = CheckpointEvaluation(
        metric="heldout_loss",
        better="lower",
        confidence=0.95,
        resamples=1000,
        posts=22,
        window_start=datetime(2026, 4, 20, tzinfo=UTC),
        window_end=datetime(2026, 4, 30, tzinfo=UTC),
        candidate={"heldout_loss": 3.0, "level_logloss": 1.05},
        current={"heldout_loss": 4.32, "level_logloss": 1.1},
        improvement={
            "heldout_loss": MetricDifference(value=1.32, low=1.04, high=1.6),
            "level_logloss": MetricDifference(value=0.05, low=-0.02, high=0.12),
        },
    )
    ledger.record(
        NewDecision(
            checkpoint="boigllm",
            action="promote",
            trigger="retrain",
            reason="better beyond the 95% interval",
            previous_version=earlier,
            current_version=served,
            candidate_version=served,
            dataset_version="v2",
            dataset_sha256="c" * 64,
            evaluation=evaluation,
            feedback=FeedbackFold(rows=12, new=4, removed=0, skipped=1, trusted_keys=None),
        )
    )
    ledger.record(
        NewDecision(
            checkpoint="boigllm",
            action="reject",
            trigger="retrain",
            reason="too few held-out posts (3 < 10)",
            previous_version=served,
            current_version=served,
            candidate_version="20260503T000000Z-0000cafe",
        )
    )
