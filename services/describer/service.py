"""BoigLLM's two directions over any ``LlmBackend``: content simulation (``describe``) and
behaviour simulation (``likelihood``), with one-at-a-time model access, an LRU result cache
and single-flight for identical concurrent requests. No FastAPI here.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from services.common import metrics, prompts
from services.common.colour_names import BASIC_COLORS
from services.common.contracts import (
    KPI_LEVELS,
    ColorSwatch,
    Context,
    DescribeRequest,
    DescribeResponse,
    DetectedObject,
    KpiLevel,
    KpiTarget,
    LevelDistribution,
    LikelihoodRequest,
    LikelihoodResponse,
    ModelInfo,
    Verbalization,
)
from services.common.errors import (
    BackendError,
    BoigError,
    ModelOutputError,
    Overloaded,
)
from services.common.history import (
    HistoryStore,
    LevelSummary,
    average_palette,
    line_palette,
    with_history_rgb,
)
from services.common.lru import LruCache
from services.common.verbalization import (
    Repaired,
    merge_repeated_objects,
    read_colors,
    render,
    render_colors,
    render_object,
    repair,
)
from services.describer import grammar
from services.describer.backends.base import LlmBackend
from services.describer.batching import MicroBatcher
from services.describer.settings import DescriberSettings

logger = logging.getLogger(__name__)

SERVICE = "describer"
OVERLOAD_RETRY_AFTER_SECONDS = 2.0
"""Retry-After of an overloaded answer: about one describe on a CPU."""
REQUEST_SECONDS_SMOOTHING = 0.3
"""Weight of the newest model call in the moving average of seconds per request."""

_inside_model_work: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "inside_model_work", default=False
)
"""Set inside admitted work: what it starts in turn (best-of's likelihood) is not admitted
again, or it could be refused after its own first half was done."""

T = TypeVar("T")


class DescribeJob(NamedTuple):
    """What one description is decoded from."""

    context: Context
    target: KpiTarget
    history: str | None
    """The account's history line at the target level (retrieval), if any."""
    typical_objects: tuple[DetectedObject, ...] = ()
    """The account's typical detection of each label it showed at the level, to pin on the
    objects line (``object_history_boxes``)."""


def _readable(raw: str) -> Repaired:
    """The model's text as a description, or a typed error when nothing in it is usable."""
    logger.debug("describe raw model output: %r", raw)
    try:
        repaired = repair(raw)
    except ValidationError as exc:
        raise ModelOutputError(f"model output does not form a valid description: {exc}") from exc
    verbalization = repaired.verbalization
    if not (verbalization.colors or verbalization.tones or verbalization.objects):
        raise ModelOutputError(
            "the model's output held no readable colors, tones or objects; "
            f"{len(repaired.repairs)} parts were unreadable"
        )
    return repaired


def _pinned_rgb(history: list[ColorSwatch]) -> dict[str, tuple[int, int, int]]:
    """The RGB a history line shows per colour name, to pin in the colors grammar: the
    account's mean colour of that name at the level, which the served line takes anyway
    (``palette_history_rgb``). A hand-made history may name colours off the grammar's list."""
    return {color.name: color.rgb for color in history if color.name in BASIC_COLORS}


class HistoryReader:
    """The accounts' history file, re-read when it changes (one stat per request): ingest
    refreshes it while the describer serves. An unreadable file reads as no history, logged
    once per change, rather than failing requests that can be answered without it."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp: tuple[float, int] | None = None
        self._store: HistoryStore | None = None

    def store(self) -> HistoryStore | None:
        if self._path is None:
            return None
        try:
            stat = self._path.stat()
        except OSError:
            self._stamp, self._store = None, None
            return None
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._store = HistoryStore.read(self._path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning(
                    "history file %s unreadable, serving without it: %s", self._path, exc
                )
                self._store = None
        return self._store


class Describer:
    """The describer's logic; every public method is a coroutine safe to call concurrently."""

    def __init__(self, backend: LlmBackend, settings: DescriberSettings) -> None:
        self._backend = backend
        self._settings = settings
        self._info = backend.info
        # Generation and scoring hold the whole CPU (or GPU) and the in-process backend is not
        # thread-safe, so model calls queue here instead of racing in the thread pool; a
        # vLLM server batches concurrent requests itself, so a few go out at once.
        self._concurrency = settings.vllm_max_concurrency if settings.backend == "vllm" else 1
        self._model_slots = asyncio.Semaphore(self._concurrency)
        # One thread per slot: asyncio's default pool (cores + 4 threads) would cap the
        # slots on a small machine and be shared with everything else that uses it.
        self._executor = ThreadPoolExecutor(
            max_workers=self._concurrency, thread_name_prefix="describer-model"
        )
        self._cache: LruCache[BaseModel] = LruCache(settings.cache_size)
        self._in_flight: dict[str, asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiters: dict[asyncio.Task[Any], int] = {}
        self._seconds_per_request: float | None = None
        self._history = HistoryReader(settings.history_path)
        self._describe_queue: MicroBatcher[DescribeJob, tuple[str, ModelInfo]] = MicroBatcher(
            self._describe_batch,
            max_batch=settings.describe_batch_size,
            concurrency=self._concurrency,
        )

    @property
    def model(self) -> ModelInfo:
        return self._info

    async def swap_backend(self, backend: LlmBackend) -> None:
        """Serve ``backend`` from now on (a hot reload). The swap waits for every model slot,
        so a request already on the model finishes on the old one; cache keys carry the model
        version, so no result of the old model is served for the new one."""
        for _ in range(self._concurrency):
            await self._model_slots.acquire()
        try:
            previous, self._backend = self._backend, backend
            self._info = backend.info
        finally:
            for _ in range(self._concurrency):
                self._model_slots.release()
        close = getattr(previous, "close", None)
        if callable(close):  # a vLLM backend's connection pool
            close()

    # --- content simulation -----------------------------------------------------------

    async def describe(self, *, context: Context, target: KpiTarget) -> DescribeResponse:
        """How an image for ``context`` should look to reach ``target`` (design §1, BoigLLM)."""
        request = DescribeRequest(context=context, target=target)
        job = self._describe_job(context, target)
        # Sampled descriptions are meant to differ between calls: only greedy ones are cached.
        cacheable = self._settings.temperature == 0 and self._settings.describe_candidates == 1
        typical = "; ".join(render_object(obj) for obj in job.typical_objects)
        response, cached = await self._single_flight(
            self._cache_key("describe", request, [job.history, typical]) if cacheable else None,
            lambda: self._describe_uncached(job),
        )
        assert isinstance(response, DescribeResponse)
        return response.model_copy(update={"cached": True}) if cached else response

    def _describe_job(self, context: Context, target: KpiTarget) -> DescribeJob:
        summary = self._history_summary(context.account, target.name, target.level)
        if summary is None:
            return DescribeJob(context, target, None)
        typical: tuple[DetectedObject, ...] = ()
        if self._settings.object_history_boxes:
            typical = tuple(summary.typical_objects.values())[: grammar.MAX_OBJECTS]
        return DescribeJob(context, target, summary.line(), typical)

    def _history_line(
        self, account: str, kpi_name: str, level: KpiLevel, *, name_level: bool = False
    ) -> str | None:
        """The account's past look at the level, for a checkpoint trained to read it (the
        content prompt's "this level", or the behaviour prompt's named level)."""
        summary = self._history_summary(account, kpi_name, level)
        return summary.line(level if name_level else None) if summary is not None else None

    def _history_summary(self, account: str, kpi_name: str, level: KpiLevel) -> LevelSummary | None:
        if not self._retrieval():
            return None
        store = self._history.store()
        return store.summary(account, kpi_name, level) if store is not None else None

    def _retrieval(self) -> bool:
        setting = self._settings.retrieval
        return setting == "on" or (setting == "auto" and self._backend.serving.retrieval)

    async def _describe_uncached(self, job: DescribeJob) -> DescribeResponse:
        candidates = self._settings.describe_candidates
        if candidates > 1:
            return await self._describe_best_of(job, candidates)
        raw, info = await self._describe_queue.submit(job)
        return self._described(_readable(raw), info)

    async def _describe_batch(self, jobs: list[DescribeJob]) -> list[tuple[str, ModelInfo]]:
        raws, info = await self._run_model(
            "describe",
            self._generate_descriptions,
            jobs,
            self._settings.temperature,
            requests=len(jobs),
        )
        return [(raw, info) for raw in raws]

    async def _describe_best_of(self, job: DescribeJob, count: int) -> DescribeResponse:
        """``count`` sampled descriptions; the one the model's own behaviour reading rates
        most likely to reach the target level (unreadable samples are dropped)."""
        temperature = self._settings.candidate_temperature
        raws, info = await self._run_model(
            "describe",
            self._generate_descriptions,
            [job] * count,
            temperature,
        )
        readable = []
        for raw in raws:
            try:
                readable.append(_readable(raw))
            except ModelOutputError as exc:
                logger.info("a sampled description was dropped: %s", exc)
        if not readable:
            raise ModelOutputError(f"none of {count} sampled descriptions was readable")
        rated = await self.likelihood(
            context=job.context,
            kpi_name=job.target.name,
            verbalizations=[r.verbalization for r in readable],
        )
        chances = [result.probabilities[job.target.level] for result in rated.results]
        best = max(range(len(readable)), key=chances.__getitem__)
        return self._described(readable[best], info)

    def _described(self, repaired: Repaired, info: ModelInfo) -> DescribeResponse:
        verbalization = merge_repeated_objects(repaired.verbalization)
        if repaired.repairs:
            metrics.REPAIRS.labels(SERVICE).inc()
            logger.info("describe output needed %d repairs", len(repaired.repairs))
        return DescribeResponse(
            verbalization=verbalization,
            text=render(verbalization),
            repairs=repaired.repairs,
            model=info,
            prompt_version=prompts.PROMPT_VERSION,
            cached=False,
        )

    def _generate_descriptions(self, jobs: list[DescribeJob], temperature: float) -> list[str]:
        """Blocking: the model's descriptions in text form, decoded as one batch (runs in a
        worker thread)."""
        few_shot = self._backend.few_shot_prompt
        chat_prompts = [
            self._backend.chat_prompt(
                prompts.describe_messages(context, target, few_shot=few_shot, history=history)
            )
            for context, target, history, _ in jobs
        ]
        histories = [job.history for job in jobs]
        decoding = self._decoding(few_shot)
        if decoding == "structured":
            return self._generate_structured(chat_prompts, jobs, temperature)
        max_new_tokens = self._settings.max_new_tokens
        if decoding == "free":
            return self._backend.generate(
                chat_prompts, max_new_tokens=max_new_tokens, stop=("\n\n",), temperature=temperature
            )
        # 'fields': we write each key and the model fills one line, so an untuned model cannot
        # skip, reorder or invent fields, and a looping line ends at its own token budget.
        heads = [""] * len(jobs)
        average = temperature == 0 and self._averages_palettes(histories)
        for key in self._fields():
            heads = [f"{head}{key}:" for head in heads]
            line_prompts = [prompt + head for prompt, head in zip(chat_prompts, heads, strict=True)]
            budget = min(prompts.FIELD_TOKEN_BUDGETS[key], max_new_tokens)
            if key == "colors" and average:
                values = self._average_colors(line_prompts, budget, histories)
            else:
                values = self._backend.generate(
                    line_prompts,
                    max_new_tokens=budget,
                    stop=prompts.FIELD_STOPS[key],
                    temperature=temperature,
                )
            heads = [f"{head} {value.strip()}\n" for head, value in zip(heads, values, strict=True)]
        return [head.rstrip("\n") for head in heads]

    def _averages_palettes(self, histories: list[str | None]) -> bool:
        """Whether the colors line is an average (``_average_colors``): of several draws, or
        of one greedy line and the palette of a history line."""
        settings = self._settings
        if settings.palette_samples > 1:
            return True
        return settings.palette_history_weight > 0 and any(histories)

    def _fields(self) -> tuple[str, ...]:
        return self._backend.serving.fields or prompts.DESCRIBE_FIELDS

    def _generate_structured(
        self, chat_prompts: list[str], jobs: list[DescribeJob], temperature: float
    ) -> list[str]:
        """'structured': the whole description in one constrained decode (``grammar``): the
        keys and every other forced token cost no sampling, and nothing off the format can
        be written. A greedy description (temperature 0) is decoded in segments where
        settings ask for it: with palette averaging (``palette_samples`` > 1, or a history
        line to average with: ``_averages_palettes``) the colors line is drawn and averaged,
        and with ``objects_temperature`` > 0 the
        objects line, last, is sampled; the lines between are greedy, each segment
        continuing the one before. Each segment pins what the job's history gives
        (``_segment_regex``)."""
        fields = self._fields()
        settings = self._settings
        average = (
            temperature == 0
            and "colors" in fields
            and self._averages_palettes([job.history for job in jobs])
        )
        sample_objects = (
            settings.objects_temperature > 0 and temperature == 0 and fields[-1:] == ("objects",)
        )
        greedy = fields[:-1] if sample_objects else fields
        heads = [""] * len(chat_prompts)
        if average:
            split = greedy.index("colors")
            if split:
                heads = self._structured_segment(
                    chat_prompts, jobs, heads, greedy[:split], temperature
                )
            colors = self._average_colors(
                [prompt + head for prompt, head in zip(chat_prompts, heads, strict=True)],
                grammar.max_tokens(("colors",)),
                [job.history for job in jobs],
                structured=True,
                continues=bool(split),
            )
            newline = "\n" if split else ""
            heads = [
                f"{head}{newline}colors: {line.strip()}"
                for head, line in zip(heads, colors, strict=True)
            ]
            greedy, continues = greedy[split + 1 :], True
        else:
            continues = False
        if greedy:
            heads = self._structured_segment(
                chat_prompts, jobs, heads, greedy, temperature, continues=continues
            )
            continues = True
        if sample_objects:
            heads = self._structured_segment(
                chat_prompts,
                jobs,
                heads,
                ("objects",),
                settings.objects_temperature,
                continues=continues,
            )
        return heads

    def _structured_segment(
        self,
        chat_prompts: list[str],
        jobs: list[DescribeJob],
        heads: list[str],
        fields: tuple[str, ...],
        temperature: float,
        *,
        continues: bool = False,
    ) -> list[str]:
        """``heads`` continued by the lines ``fields`` in one constrained decode; with
        ``continues``, each line starts with its newline (``grammar.description_regex``), so
        a line before them cut by its token budget still ends where they begin, and lines
        that may be left out cost nothing when the model ends there. The budget is the most
        the grammar admits, so no line the grammar would finish is cut."""
        regexes = [self._segment_regex(fields, job, continues=continues) for job in jobs]
        values = self._backend.generate(
            [prompt + head for prompt, head in zip(chat_prompts, heads, strict=True)],
            max_new_tokens=grammar.max_tokens(fields),
            temperature=temperature,
            regex=regexes,
        )
        return [head + value for head, value in zip(heads, values, strict=True)]

    def _segment_regex(self, fields: tuple[str, ...], job: DescribeJob, *, continues: bool) -> str:
        """The grammar of a segment for one job: with its history, the colours the history
        shows pinned at its RGB (``palette_history_rgb``) and the objects line held to the
        labels the account showed at the level, each at its typical detection
        (``object_history_boxes``, already applied to ``job.typical_objects``)."""
        pinned_rgb = None
        if "colors" in fields and job.history and self._settings.palette_history_rgb:
            pinned_rgb = _pinned_rgb(line_palette(job.history))
        return grammar.description_regex(
            fields,
            pinned_rgb=pinned_rgb,
            pinned_objects=job.typical_objects if "objects" in fields else (),
            continues=continues,
        )

    def _average_colors(
        self,
        line_prompts: list[str],
        max_new_tokens: int,
        histories: list[str | None],
        *,
        structured: bool = False,
        continues: bool = False,
    ) -> list[str]:
        """Each prompt's colors line (its value) as the average palette of ``palette_samples``
        sampled lines (settings.palette_samples says why; one draw is the greedy line), with
        the palette of the prompt's history line counted as ``palette_history_weight`` more
        samples and, with ``palette_history_rgb``, each colour the history names at the
        history's RGB. A prompt none of whose samples reads as a colour keeps its first
        sample, for the repairing parser to report. ``structured``: the prompts end before
        the key and each sample is a whole ``colors: ...`` line under the colours grammar
        (``continues``: starting with its newline), in which, with ``palette_history_rgb``,
        the colours the history shows are pinned at its RGB: the average takes that RGB for
        them anyway, so the samples spend no forward pass on digits that would be replaced
        (and read on from the RGB they will be shown with)."""
        settings = self._settings
        samples = settings.palette_samples
        evidences = [line_palette(history) if history else [] for history in histories]
        regexes = None
        if structured:
            regexes = [
                grammar.description_regex(
                    ("colors",),
                    pinned_rgb=_pinned_rgb(evidence) if settings.palette_history_rgb else None,
                    continues=continues,
                )
                for evidence in evidences
            ]
        drawn = self._backend.generate(
            line_prompts,
            max_new_tokens=max_new_tokens,
            stop=() if structured else prompts.FIELD_STOPS["colors"],
            # One draw is the greedy line: the likeliest palette, not a random one.
            temperature=settings.palette_temperature if samples > 1 else 0.0,
            samples=samples,
            regex=regexes,
        )
        if structured:
            drawn = [line.strip().removeprefix("colors:") for line in drawn]
        lines = []
        for index, evidence in enumerate(evidences):
            group = drawn[index * samples : (index + 1) * samples]
            palettes = [read_colors(line) for line in group]
            weight = settings.palette_history_weight if evidence else 0
            if samples == 1 and not weight:
                # Nothing to average (no history; it may share the batch with prompts that
                # have one): the greedy line as written, as a one-decode description has it.
                lines.append(group[0])
                continue
            palette = average_palette(palettes + [evidence] * weight)
            if settings.palette_history_rgb:
                palette = with_history_rgb(palette, evidence)
            lines.append(render_colors(palette) if any(palettes) else group[0])
        return lines

    def _decoding(self, few_shot: bool) -> str:
        decoding = self._settings.describe_decoding
        if decoding == "auto":
            if self._backend.supports_regex:
                return "structured"
            return "fields" if few_shot or self._backend.serving.fields else "free"
        if decoding == "structured" and not self._backend.supports_regex:
            raise BackendError(
                "describe_decoding is 'structured' but the backend cannot constrain decoding"
            )
        return decoding

    # --- behaviour simulation ---------------------------------------------------------

    async def likelihood(
        self, *, context: Context, kpi_name: str, verbalizations: list[Verbalization]
    ) -> LikelihoodResponse:
        """P(level) of the KPI for each described image in ``context`` (behaviour simulation)."""
        self._settings.batch_limits.check(len(verbalizations), "verbalizations")
        request = LikelihoodRequest(
            context=context, kpi_name=kpi_name, verbalizations=verbalizations
        )
        # Read once here: the cache key and the model call must see the same history.
        histories = {
            level: self._history_line(context.account, kpi_name, level, name_level=True)
            for level in KPI_LEVELS
        }
        content_lines = {
            level: self._history_line(context.account, kpi_name, level) for level in KPI_LEVELS
        }
        store = self._history.store() if self._retrieval() else None
        prior = store.level_posts(context.account, kpi_name) if store is not None else None
        response, _ = await self._single_flight(
            self._cache_key("likelihood", request, [*histories.values(), str(prior)]),
            lambda: self._likelihood_uncached(
                context, kpi_name, verbalizations, histories, content_lines, prior
            ),
        )
        assert isinstance(response, LikelihoodResponse)
        return response

    async def _likelihood_uncached(
        self,
        context: Context,
        kpi_name: str,
        verbalizations: list[Verbalization],
        histories: dict[KpiLevel, str | None],
        content_lines: dict[KpiLevel, str | None],
        prior: dict[KpiLevel, int] | None,
    ) -> LikelihoodResponse:
        generative = (
            self._backend.serving.behaviour == "generative"
            and prior is not None
            and sum(prior.values()) > 0
        )
        if generative:
            assert prior is not None
            logprobs, info = await self._run_model(
                "likelihood",
                self._generative_level_logprobs,
                context,
                kpi_name,
                verbalizations,
                content_lines,
                prior,
            )
        else:
            logprobs, info = await self._run_model(
                "likelihood", self._level_logprobs, context, kpi_name, verbalizations, histories
            )
        return LikelihoodResponse(
            results=[self._distribution(row) for row in logprobs],
            model=info,
            prompt_version=prompts.PROMPT_VERSION,
        )

    def _level_logprobs(
        self,
        context: Context,
        kpi_name: str,
        verbalizations: list[Verbalization],
        histories: dict[KpiLevel, str | None],
    ) -> list[list[float]]:
        """Blocking: log P(level word | prompt) for each verbalization x level."""
        lines = [line for line in histories.values() if line]
        prompt_texts = [
            self._backend.chat_prompt(
                prompts.behaviour_messages(context, kpi_name, render(v), lines)
            )
            + prompts.BEHAVIOUR_ANSWER_PREFIX
            for v in verbalizations
        ]
        continuations = [prompts.level_continuation(level) for level in KPI_LEVELS]
        return self._backend.continuation_logprobs(prompt_texts, continuations)

    def _generative_level_logprobs(
        self,
        context: Context,
        kpi_name: str,
        verbalizations: list[Verbalization],
        content_lines: dict[KpiLevel, str | None],
        prior: dict[KpiLevel, int],
    ) -> list[list[float]]:
        """Blocking: Bayes' rule through the content direction. log P(description | content
        prompt at the level, with that level's history) / temperature + log P(level), where
        the prior is the account's level frequencies (Laplace-smoothed); the softmax in
        ``_distribution`` normalizes over the levels."""
        few_shot = self._backend.few_shot_prompt
        level_prompts = [
            self._backend.chat_prompt(
                prompts.describe_messages(
                    context,
                    KpiTarget(name=kpi_name, level=level),
                    few_shot=few_shot,
                    history=content_lines[level],
                )
            )
            for level in KPI_LEVELS
        ]
        total = sum(prior.values()) + len(KPI_LEVELS)
        log_prior = [math.log((prior[level] + 1) / total) for level in KPI_LEVELS]
        temperature = self._backend.serving.temperature
        results = []
        for verbalization in verbalizations:
            scored = self._backend.continuation_logprobs(level_prompts, [render(verbalization)])
            results.append(
                [row[0] / temperature + lp for row, lp in zip(scored, log_prior, strict=True)]
            )
        return results

    def _distribution(self, logprobs: list[float]) -> LevelDistribution:
        # Softmax over the three level words only: the model's mass on any other token says
        # nothing about the KPI, so the probabilities are conditional on answering a level.
        if len(logprobs) != len(KPI_LEVELS) or not all(math.isfinite(lp) for lp in logprobs):
            raise BackendError(f"backend returned unusable level log-probabilities {logprobs!r}")
        top = max(logprobs)
        weights = [math.exp(lp - top) for lp in logprobs]
        total = sum(weights)
        probabilities = {level: w / total for level, w in zip(KPI_LEVELS, weights, strict=True)}
        midpoints = self._settings.level_midpoints
        expected = sum(p * midpoints[level] for level, p in probabilities.items())
        return LevelDistribution(
            probabilities=probabilities, expected_percentile=min(1.0, max(0.0, expected))
        )

    # --- plumbing ---------------------------------------------------------------------

    def _cache_key(
        self, operation: str, request: BaseModel, history: list[str | None] | None = None
    ) -> str:
        settings = self._settings
        canonical = json.dumps(
            {
                "operation": operation,
                "request": request.model_dump(mode="json"),
                # Ingest refreshes the history: a new look of the account is a new answer.
                "history": history or [],
                "serving": self._backend.serving.model_dump(mode="json"),
                "retrieval": self._retrieval(),
                "model": self._info.version,
                "prompts": prompts.PROMPT_VERSION,
                # Anything else that changes the answer for the same request and model.
                "decoding": [
                    self._decoding(self._backend.few_shot_prompt),
                    settings.max_new_tokens,
                    settings.describe_candidates,
                ],
                "midpoints": {level.value: settings.level_midpoints[level] for level in KPI_LEVELS},
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    async def _single_flight(
        self, key: str | None, compute: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        """The result for ``key`` and whether it was shared rather than computed for this call.

        The computation runs in a task of its own that its callers await (``_await_work``):
        one caller going away (client disconnect) must not cancel what others wait on.
        """
        if key is None:
            return await self._await_work(self._start(compute)), False
        cached = self._cache.get(key)
        if cached is not None:
            metrics.CACHE_LOOKUPS.labels(SERVICE, "result", "hit").inc()
            return cached, True  # type: ignore[return-value]
        task = self._in_flight.get(key)
        if task is not None:
            metrics.CACHE_LOOKUPS.labels(SERVICE, "result", "hit").inc()
            return await self._await_work(task), True
        metrics.CACHE_LOOKUPS.labels(SERVICE, "result", "miss").inc()
        task = self._start(compute)
        self._in_flight[key] = task
        version = self._info.version  # the model version the key was made for
        task.add_done_callback(lambda done: self._settle(key, done, version))
        return await self._await_work(task), False

    async def _await_work(self, task: asyncio.Task[T]) -> T:
        """``task``'s result. The last caller to leave before it is done drops it: queued work
        never reaches the model, and running work frees the model when its thread ends."""
        self._waiters[task] = self._waiters.get(task, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            self._waiters[task] -= 1
            if not self._waiters[task]:
                del self._waiters[task]
                if not task.done():
                    self._drop(task)

    def _drop(self, task: asyncio.Task[Any]) -> None:
        task.cancel()
        # Later callers of the same question start afresh rather than join cancelled work.
        for key in [key for key, running in self._in_flight.items() if running is task]:
            del self._in_flight[key]
        metrics.DROPPED_WORK.labels(SERVICE).inc()
        logger.info("dropped model work that no caller waits for any more")

    def _start(self, compute: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """New model work as a task of its own. Overloaded beyond ``max_pending_requests``
        tasks running or queued for the model, or when the work already admitted would keep
        this one waiting longer than ``max_queue_wait_seconds``: a quick 503 with a
        Retry-After beats an answer that arrives after the caller has timed out."""
        pending = len(self._tasks)
        if _inside_model_work.get():
            pass  # part of work already admitted
        elif pending >= self._settings.max_pending_requests:
            raise Overloaded(
                f"the describer has {pending} requests waiting for the model; retry shortly",
                retry_after=OVERLOAD_RETRY_AFTER_SECONDS,
            )
        elif pending and self._seconds_per_request is not None:
            # Until this work is answered: the requests ahead of it and its own, at the
            # model's recent time per request (a batch's time shared by its requests; on a
            # CPU, 8 rows take ~3x one row's time, not the same). Work that finds the queue
            # empty always runs, however slow the model has been.
            limit = self._settings.max_queue_wait_seconds
            expected = (pending + 1) * self._seconds_per_request
            if expected > limit:
                raise Overloaded(
                    f"the describer's queue would keep this request about {expected:.0f} s "
                    f"(the limit is {limit:.0f} s); retry later",
                    retry_after=max(OVERLOAD_RETRY_AFTER_SECONDS, expected - limit),
                )

        async def run() -> T:
            _inside_model_work.set(True)
            return await compute()

        task = asyncio.create_task(run())
        # The event loop holds tasks weakly; keep each one alive until it is done.
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        metrics.PENDING_REQUESTS.labels(SERVICE).set(len(self._tasks))
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        metrics.PENDING_REQUESTS.labels(SERVICE).set(len(self._tasks))

    def _observe_request_seconds(self, seconds: float) -> None:
        """A moving average of the model time one request costs (a batch's time shared)."""
        previous = self._seconds_per_request
        self._seconds_per_request = (
            seconds
            if previous is None
            else previous + REQUEST_SECONDS_SMOOTHING * (seconds - previous)
        )

    def _settle(self, key: str, task: asyncio.Task[Any], version: str) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        # Retrieving the exception also keeps asyncio from logging it as never retrieved when
        # every caller has gone; failures are not cached, the next request tries again.
        if not task.cancelled() and task.exception() is None:
            result = task.result()
            # A hot reload between key and computation means another model answered: caching
            # that under this key would serve it if the pointer ever moved back.
            model = getattr(result, "model", None)
            if not isinstance(model, ModelInfo) or model.version == version:
                self._cache.put(key, result)

    async def _run_model(
        self, operation: str, call: Callable[..., T], *args: Any, requests: int = 1
    ) -> tuple[T, ModelInfo]:
        """``call``'s result and the model that produced it (read under the lock: a hot reload
        may swap the backend as soon as the lock is free). ``requests``: how many requests
        the call answers, for the estimate of each one's share of the model's time."""
        queued = time.perf_counter()
        async with self._model_slots:
            started = time.perf_counter()
            metrics.MODEL_QUEUE_SECONDS.labels(SERVICE, operation).observe(started - queued)
            info = self._info
            try:
                return await _to_thread_to_the_end(self._executor, call, *args), info
            except BoigError:
                raise
            except Exception as exc:
                logger.exception("%s failed in the model backend", operation)
                raise BackendError(
                    f"the model failed during {operation}; see the describer log"
                ) from exc
            finally:
                elapsed = time.perf_counter() - started
                # With several calls in flight, each one holds the model for a share of its time.
                self._observe_request_seconds(elapsed / max(1, requests) / self._concurrency)
                metrics.MODEL_SECONDS.labels(SERVICE, operation).observe(elapsed)
                logger.info(
                    "%s model call: %.0f ms queued, %.0f ms compute",
                    operation,
                    (started - queued) * 1000,
                    elapsed * 1000,
                )


async def _to_thread_to_the_end(
    executor: ThreadPoolExecutor, call: Callable[..., T], *args: Any
) -> T:
    """``call(*args)`` in a worker thread of ``executor`` (with the caller's context
    variables). If the caller is cancelled meanwhile, this still waits for the thread to end
    before passing the cancellation on: a thread cannot be stopped, and whoever holds a model
    slot must not release it while the model runs."""
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    work = asyncio.ensure_future(
        loop.run_in_executor(executor, functools.partial(context.run, call, *args))
    )
    cancelled = False
    while not work.done():
        try:
            await asyncio.wait({work})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not work.cancelled():
            work.exception()  # retrieved: nobody wants this answer or its failure
        raise asyncio.CancelledError
    return work.result()
