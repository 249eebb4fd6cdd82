"""In-process transformers backend: a local HF causal LM on CPU or CUDA (the embedded default)."""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.utils import logging as hf_logging

from services.common.contracts import ModelInfo
from services.common.serving_profile import ServingProfile
from services.common.torch_device import resolve_device, resolve_dtype
from services.describer.backends.common import (
    ServedModel,
    joint_encodings,
    model_version,
    output_cache,
    regex_per_prompt,
)
from services.describer.model_prep import MANIFEST
from services.describer.settings import DescriberSettings

logger = logging.getLogger(__name__)


class TransformersBackend(ServedModel):
    """One model and tokenizer, loaded from a local folder only (never the hub)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        info: ModelInfo,
        max_batch_size: int = 16,
        few_shot_prompt: bool = True,
        serving: ServingProfile | None = None,
    ) -> None:
        self._model = model.eval()
        self._serving = serving or ServingProfile()
        self._tokenizer = tokenizer
        self._info = info
        self._few_shot_prompt = few_shot_prompt
        self._max_batch_size = max_batch_size
        # Left padding keeps every row's last prompt token in the last column, which both
        # generation and the "logits of the last position" shortcut below rely on.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        self._eos_ids = _eos_token_ids(model, tokenizer)
        # What the last generation left in its KV cache (see _reuse).
        self._last: _CachedBatch | None = None
        self._grammars: Any = None  # a constrained.GrammarCompiler once a regex is asked for
        self.last_decode_stats: tuple[int, int] = (0, 0)
        """(forward passes, forced tokens) of the last constrained decode: for benchmarks."""
        # transformers 5 renamed the KV cache argument; the old name still works but warns.
        parameters = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 16,
        adapter: Path | None = None,
        adapter_version: str | None = None,
        few_shot_prompt: bool = True,
        serving: ServingProfile | None = None,
    ) -> TransformersBackend:
        """Load the model at ``path``; with ``adapter`` (a PEFT LoRA folder, e.g. a published
        checkpoint), apply it and merge it into the weights: merged weights serve as fast as
        the base model (design §7). The adapter's tokenizer is used where it ships one.
        ``adapter_version`` (the checkpoint version) goes into ``info.version``;
        ``few_shot_prompt`` says which content prompt the model was trained for."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no model folder (config.json) at {path}")
        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
        started = time.perf_counter()
        # A service logs one line per load; tqdm bars would only clutter its log.
        hf_logging.disable_progress_bar()
        tokenizer_dir = (
            adapter
            if adapter is not None and (adapter / "tokenizer_config.json").is_file()
            else path
        )
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype=resolved_dtype
        )
        info = ModelInfo(name=_model_name(path), version=model_version(path))
        if adapter is not None:
            model = _merge_adapter(model, adapter)
            info = ModelInfo(
                name=info.name,
                version=f"{adapter_version or model_version(adapter)}+{info.version}",
            )
        model = model.to(resolved_device)
        logger.info(
            "loaded %s (%s) on %s as %s in %.2f s",
            info.name,
            info.version,
            resolved_device,
            resolved_dtype,
            time.perf_counter() - started,
        )
        return cls(
            model,
            tokenizer,
            info=info,
            max_batch_size=max_batch_size,
            few_shot_prompt=few_shot_prompt,
            serving=serving,
        )

    @classmethod
    def from_settings(
        cls,
        settings: DescriberSettings,
        *,
        adapter: Path | None = None,
        adapter_version: str | None = None,
        few_shot_prompt: bool = True,
        serving: ServingProfile | None = None,
    ) -> TransformersBackend:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        return cls.load(
            settings.model_path,
            device=settings.device,
            dtype=settings.dtype,
            max_batch_size=settings.max_batch_size,
            adapter=adapter,
            adapter_version=adapter_version,
            few_shot_prompt=few_shot_prompt,
            serving=serving,
        )

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        samples: int = 1,
        regex: str | Sequence[str] | None = None,
    ) -> list[str]:
        if samples < 1:
            raise ValueError(f"samples must be at least 1, not {samples}")
        expressions = regex_per_prompt(regex, len(prompts))
        results: list[str] = []
        # max_batch_size bounds the distinct prompts of a pass; their samples share each
        # prompt's cache, so a batch of samples costs decoding, not more prompt reading.
        chunks = _chunks(prompts, self._max_batch_size)
        if expressions is None:
            for chunk in chunks:
                results.extend(
                    self._generate_batch(chunk, max_new_tokens, tuple(stop), temperature, samples)
                )
            return results
        for chunk, chunk_expressions in zip(
            chunks, _chunks(expressions, self._max_batch_size), strict=True
        ):
            results.extend(
                self._generate_constrained(
                    chunk, max_new_tokens, chunk_expressions, temperature, samples
                )
            )
        return results

    def _generate_constrained(
        self,
        prompts: list[str],
        max_new_tokens: int,
        regexes: list[str],
        temperature: float,
        samples: int,
    ) -> list[str]:
        """Decode each prompt's continuation under its expression (``constrained``:
        llguidance masks, forced tokens fed together). The KV cache is reused as in
        ``_generate_batch``."""
        from services.describer.backends.constrained import (
            GrammarCompiler,
            decode_constrained,
            vocab_size,
        )

        if self._grammars is None:
            self._grammars = GrammarCompiler(
                self._tokenizer, vocab_size=vocab_size(self._model), eos_ids=self._eos_ids
            )
        input_ids, mask, cache = self._batch_inputs(prompts, samples)
        layout = input_ids.tolist()
        decoded = decode_constrained(
            self._model,
            layout=layout,
            mask=mask.tolist(),
            cache=cache,
            cache_kwarg=self._cache_kwarg,
            matchers=[
                self._grammars.matcher(regexes[row // samples]) for row in range(len(layout))
            ],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            pad_id=self._tokenizer.pad_token_id,
            eos_ids=self._eos_ids,
        )
        if decoded.errors:
            raise RuntimeError(f"constrained decoding failed: {decoded.errors[0]}")
        self.last_decode_stats = (decoded.forward_passes, decoded.forced_tokens)
        if decoded.cache is not None:
            self._last = _CachedBatch(
                layout=decoded.layout, mask=decoded.mask, cache=decoded.cache, samples=samples
            )
        return [
            self._tokenizer.decode(tokens, skip_special_tokens=True) for tokens in decoded.tokens
        ]

    def _batch_inputs(
        self, prompts: list[str], samples: int
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Token ids and attention mask of the prompts (left-padded, each repeated for its
        ``samples``), with the KV cache that already holds their start (``_reuse``, or the
        prompts read once and copied for their samples) or None. Whatever decodes next
        extends that cache in place, so the previous generation's is forgotten here."""
        rows = [self._token_ids(prompt) for prompt in prompts]
        reuse = self._reuse(rows)
        self._last = None  # stale if the decode that extends the cache fails midway
        if reuse is None:
            input_ids, mask = _pad(
                rows, self._tokenizer.pad_token_id, left=True, device=torch.device("cpu")
            )
            cache = None
        else:
            input_ids, mask, cache = reuse
        if samples > 1:
            # Each prompt is read once; its KV cache is then copied for its samples.
            if cache is None and input_ids.shape[1] > 1:
                cache = self._prefill(input_ids, mask)
            if cache is not None:
                cache.batch_repeat_interleave(samples)
            input_ids = input_ids.repeat_interleave(samples, dim=0)
            mask = mask.repeat_interleave(samples, dim=0)
        return input_ids, mask, cache

    def _generate_batch(
        self,
        prompts: list[str],
        max_new_tokens: int,
        stop: tuple[str, ...],
        temperature: float,
        samples: int = 1,
    ) -> list[str]:
        input_ids, mask, cache = self._batch_inputs(prompts, samples)
        prompt_length = input_ids.shape[1]
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=None,
            top_p=None,
            pad_token_id=self._tokenizer.pad_token_id,
            eos_token_id=self._eos_ids,
            return_dict_in_generate=True,
        )
        criteria = StoppingCriteriaList()
        if stop:
            criteria.append(_StopOnText(self._tokenizer, prompt_length, stop))
        device = self._model.device
        with torch.inference_mode():
            output = self._model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                stopping_criteria=criteria,
                **({self._cache_kwarg: cache} if cache is not None else {}),
            )
        sequences = output.sequences
        new_cache = output_cache(output)
        if new_cache is not None:
            # The cache holds every position but the last one generated (never fed back);
            # generate attends to every generated position, padding after a row's end too.
            generated = sequences.shape[1] - prompt_length
            self._last = _CachedBatch(
                layout=sequences.tolist(),
                mask=[row + [1] * generated for row in mask.tolist()],
                cache=new_cache,
                samples=samples,
            )
        texts = self._tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
        return [_cut_at_stop(text, stop) for text in texts]

    def _reuse(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, Any] | None:
        """Inputs that continue the previous generation's KV cache, or None.

        Describing fills one line at a time, each prompt being the last prompt plus its
        answer plus the next key, and the cache already holds all but that tail: without
        reuse each line would re-read the whole prompt (~250 tokens for BoigLLM, ~700 with
        the base model's examples), which costs more than decoding the line. For a batch,
        the cache is cut where the first row stops matching its own earlier tokens (every
        row shares the cache's positions), and each row's remaining tokens follow after
        padding that the attention mask hides; positions come from the mask, so a row reads
        exactly as it would alone.
        """
        last = self._last
        if last is not None and last.samples > 1 and len(last.layout) == len(rows) * last.samples:
            last = self._first_samples(last)
        if last is None or len(last.layout) != len(rows):
            return None
        cached = last.cache.get_seq_length()
        # Per row: the first position that cannot be reused, keeping one token to run.
        cut = cached
        for layout, row_mask, ids in zip(last.layout, last.mask, rows, strict=True):
            matched, first_free = 0, 0
            for position in range(cached):
                if not row_mask[position]:
                    first_free = position + 1
                    continue
                if matched >= len(ids) - 1 or layout[position] != ids[matched]:
                    break
                matched += 1
                first_free = position + 1
            cut = min(cut, first_free)
        if cut <= 0:
            return None
        try:
            # A negative count means "remove this many" in every transformers version.
            last.cache.crop(cut - cached)
        except (ValueError, RuntimeError, AttributeError):  # a cache kind that cannot be cut
            return None
        tails = [ids[sum(row_mask[:cut]) :] for row_mask, ids in zip(last.mask, rows, strict=True)]
        width = max(len(tail) for tail in tails)
        pad_id = self._tokenizer.pad_token_id
        input_ids = torch.tensor(
            [
                layout[:cut] + [pad_id] * (width - len(tail)) + tail
                for layout, tail in zip(last.layout, tails, strict=True)
            ],
            dtype=torch.long,
        )
        attention_mask = torch.tensor(
            [
                row_mask[:cut] + [0] * (width - len(tail)) + [1] * len(tail)
                for row_mask, tail in zip(last.mask, tails, strict=True)
            ],
            dtype=torch.long,
        )
        return input_ids, attention_mask, last.cache

    def _first_samples(self, last: _CachedBatch) -> _CachedBatch | None:
        """The cache of a sampled batch cut down to each prompt's first sample: the next line
        continues one text per prompt, which shares its prompt with every sample."""
        keep = list(range(0, len(last.layout), last.samples))
        try:
            last.cache.batch_select_indices(torch.tensor(keep))
        except (ValueError, RuntimeError, AttributeError):  # a cache kind without row selection
            return None
        return _CachedBatch(
            layout=[last.layout[i] for i in keep],
            mask=[last.mask[i] for i in keep],
            cache=last.cache,
        )

    def _prefill(self, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
        """The KV cache of the prompts, all but each one's last token (which generate runs)."""
        with torch.inference_mode():
            output = self._model(
                input_ids=input_ids[:, :-1].to(self._model.device),
                attention_mask=mask[:, :-1].to(self._model.device),
                position_ids=_positions(mask[:, :-1]).to(self._model.device),
                use_cache=True,
            )
        return output_cache(output)

    def continuation_logprobs(
        self, prompts: list[str], continuations: list[str]
    ) -> list[list[float]]:
        if not continuations:
            return [[] for _ in prompts]
        if not all(continuations):
            raise ValueError("continuations must be non-empty strings")
        results: list[list[float]] = []
        for chunk in _chunks(prompts, self._max_batch_size):
            results.extend(self._score_batch(chunk, continuations))
        return results

    def _score_batch(self, prompts: list[str], continuations: list[str]) -> list[list[float]]:
        """Score every continuation after every prompt with one pass over each prompt.

        Prompt and continuation are encoded together, because BPE merges across the boundary
        (the leading space joins the next word), and the prompt is cut back to the longest
        token prefix it shares with *every* joint encoding. That shared prefix runs once;
        its KV cache is then repeated per continuation and only the short tails run again.
        """
        n_cont = len(continuations)
        prefixes: list[list[int]] = []
        tails: list[list[int]] = []  # row i * n_cont + j: tokens scored for (prompt i, cont j)
        for prompt in prompts:
            shared, joints = joint_encodings(self._token_ids, prompt, continuations)
            prefixes.append(joints[0][:shared])
            tails.extend(joint[shared:] for joint in joints)

        device = self._model.device
        pad_id = self._tokenizer.pad_token_id
        prefix_ids, prefix_mask = _pad(prefixes, pad_id, left=True, device=device)
        with torch.inference_mode():
            output = self._model(
                input_ids=prefix_ids,
                attention_mask=prefix_mask,
                position_ids=_positions(prefix_mask),
                use_cache=True,
                logits_to_keep=1,
            )
            first = output.logits[:, -1, :].float().log_softmax(-1)
            first = first.repeat_interleave(n_cont, dim=0)
            longest_tail = max(len(tail) for tail in tails)
            rest: torch.Tensor | None = None
            if longest_tail > 1:
                # Feed each tail but its last token; its outputs score tokens 2..n of the tail.
                tail_ids, tail_mask = _pad(
                    [tail[:-1] for tail in tails], pad_id, left=False, device=device
                )
                cache = output_cache(output)
                cache.batch_repeat_interleave(n_cont)
                full_mask = torch.cat([prefix_mask.repeat_interleave(n_cont, dim=0), tail_mask], 1)
                offsets = prefix_mask.sum(-1, keepdim=True).repeat_interleave(n_cont, dim=0)
                positions = offsets + torch.arange(tail_ids.shape[1], device=device)
                rest_output = self._model(
                    input_ids=tail_ids,
                    attention_mask=full_mask,
                    position_ids=positions,
                    use_cache=False,
                    **{self._cache_kwarg: cache},
                )
                rest = rest_output.logits.float().log_softmax(-1)

        scores: list[float] = []
        for row, tail in enumerate(tails):
            total = first[row, tail[0]].item()
            for position, token in enumerate(tail[1:]):
                assert rest is not None
                total += rest[row, position, token].item()
            scores.append(total)
        return [scores[i * n_cont : (i + 1) * n_cont] for i in range(len(prompts))]

    def _token_ids(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids


@dataclass
class _CachedBatch:
    """The KV cache a generation left, with the tokens at each of its positions per row."""

    layout: list[list[int]]
    """Per row, the token at each position (pads included, left and inside)."""
    mask: list[list[int]]
    """Per row, 1 where the position holds a token the row attends to."""
    cache: Any
    samples: int = 1
    """Consecutive rows that continue the same prompt (``generate``'s ``samples``)."""


class _StopOnText(StoppingCriteria):
    """Stops each row once its generated text contains a stop string.

    Checked on decoded text rather than token ids: a newline hides inside many BPE tokens
    (".\\n", "\\n\\n", ")\\n"), so no fixed list of stop token ids catches every case.
    """

    def __init__(self, tokenizer: Any, prompt_length: int, stop: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._prompt_length = prompt_length
        self._stop = stop

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        texts = self._tokenizer.batch_decode(
            input_ids[:, self._prompt_length :], skip_special_tokens=True
        )
        done = [any(stop in text for stop in self._stop) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cut = min((index for s in stop if (index := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def _merge_adapter(model: Any, adapter: Path) -> Any:
    """The base model with the LoRA adapter at ``adapter`` folded into its weights."""
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no LoRA adapter (adapter_config.json) at {adapter}")
    # safetensors only: the registry admits no pickle-based weights, and peft reads
    # adapter_model.safetensors by default.
    peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    return peft_model.merge_and_unload()


def _eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    # Chat models end a turn with a token (<|im_end|>, <|eot_id|>) that the generation config
    # and the tokenizer may name differently; stop on any of them.
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(token) for token in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _pad(
    rows: list[list[int]], pad_id: int, *, left: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(row) for row in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if not row:
            continue
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[index, span] = torch.tensor(row, dtype=torch.long)
        mask[index, span] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # With left padding the first real token must sit at position 0, as in an unpadded pass.
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _model_name(path: Path) -> str:
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            name = json.loads(manifest.read_text()).get("name")
        except (OSError, ValueError):
            name = None
        if isinstance(name, str) and name:
            return name
    return path.name
