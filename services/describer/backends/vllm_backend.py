"""The vLLM backend: BoigLLM served by vLLM's OpenAI-compatible HTTP server (design §3).

vLLM runs as a process of its own (its dependency pins never enter ours). This backend keeps
the tokenizer locally, so prompts travel as token ids: the server reads exactly the tokens the
transformers backend would, and continuations are scored over the same joint encoding.

- ``generate``: ``POST /v1/completions``; ``samples`` is the request's ``n``; ``regex`` goes to
  vLLM's ``structured_outputs`` (the grammar engine runs in the server); prompts with
  different expressions go as concurrent requests, one per expression.
- ``continuation_logprobs``: the joint encodings of prompt and continuation with
  ``prompt_logprobs``; a continuation's score is the sum over its tokens (each encoding is
  read in full: vLLM does not use its prefix cache for requests asking for prompt
  log-probabilities).
- Checkpoints: a BoigLLM LoRA is loaded into the running server under a name of its own
  (``/v1/load_lora_adapter``, which needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true`` on the
  server) and every request names it; several accounts' adapters share one server. Where LoRA
  on the server is slow (CPU), serve the checkpoint's merged weights instead
  (``vllm_adapters=merged``): the server was started on them, and requests name its model.

Transport failures and 5xx are retried (bounded, with backoff) on one pooled client; what is
left is a ``ModelUnavailable`` (503) for callers, never a bare exception.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from services.common.checkpoints import CheckpointRef, served_model_name
from services.common.contracts import ModelInfo
from services.common.errors import BackendError, ModelUnavailable
from services.common.serving_profile import ServingProfile
from services.describer.backends.common import (
    ServedModel,
    joint_encodings,
    model_version,
    regex_per_prompt,
)
from services.describer.settings import DescriberSettings

logger = logging.getLogger(__name__)

RETRY_BACKOFF_SECONDS = 0.5
"""First wait before a retry; doubled for each further one."""
MAX_PARALLEL_REQUESTS = 8
"""Most requests one ``generate`` has in flight (one per distinct expression: the describer
pins each history's colours into the colors line's grammar). Requests of several concurrent
calls share the pool, so at most this many are in flight for the fan-out as a whole."""
RETRIED_STATUSES = frozenset({502, 503, 504})
"""Answers that say the server (or a proxy before it) could not take the request now."""


class AdapterMissing(ModelUnavailable):
    """The server does not serve the model or adapter a request names (404)."""


class VllmBackend(ServedModel):
    """Requests to one vLLM server, for one model or adapter on it."""

    def __init__(
        self,
        client: httpx.Client,
        tokenizer: Any,
        *,
        model: str,
        info: ModelInfo,
        few_shot_prompt: bool = True,
        serving: ServingProfile | None = None,
        retries: int = 2,
    ) -> None:
        self._client = client
        self._tokenizer = tokenizer
        self._model = model
        self._info = info
        self._few_shot_prompt = few_shot_prompt
        self._serving = serving or ServingProfile()
        self._retries = retries
        self._fan_out = ThreadPoolExecutor(
            max_workers=MAX_PARALLEL_REQUESTS, thread_name_prefix="describer-vllm"
        )
        """Sends the requests of one generate call that needs several (one per expression)."""
        self._adapter: tuple[str, str] | None = None
        """(name, path) of the LoRA adapter loaded at run time, to load again after a
        server restart."""

    @classmethod
    def from_settings(
        cls,
        settings: DescriberSettings,
        *,
        checkpoint: CheckpointRef | None = None,
        few_shot_prompt: bool = True,
        serving: ServingProfile | None = None,
        client: httpx.Client | None = None,
    ) -> VllmBackend:
        """Connect to ``settings.vllm_url`` (waiting until it answers is the caller's job:
        this fails with ModelUnavailable when it does not). With a ``checkpoint``: under
        ``vllm_adapters=lora`` its LoRA is loaded into the server first, under
        ``checkpoints.served_model_name``, so a hot reload loads the new adapter before any
        request names it; under ``merged`` the server must already serve that name."""
        from transformers import AutoTokenizer

        headers = {}
        if settings.vllm_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.vllm_api_key.get_secret_value()}"
        client = client or httpx.Client(
            base_url=settings.vllm_url,
            headers=headers,
            timeout=httpx.Timeout(settings.vllm_timeout_seconds, connect=5.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        adapter = checkpoint.path if checkpoint is not None else None
        tokenizer_dir = (
            adapter
            if adapter is not None and (adapter / "tokenizer_config.json").is_file()
            else settings.model_path
        )
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        base_version = model_version(settings.model_path)
        backend = cls(
            client,
            tokenizer,
            model="",
            info=ModelInfo(name=settings.model_path.name, version=base_version),
            few_shot_prompt=few_shot_prompt,
            serving=serving,
            retries=settings.vllm_retries,
        )
        served = backend.served_models()
        if checkpoint is None:
            backend._model = _base_model_name(served, settings)
            backend._info = ModelInfo(name=backend._model, version=base_version)
            return backend
        name = served_model_name(checkpoint)
        if settings.vllm_adapters == "merged":
            # The server must have been started on this checkpoint's merged weights
            # (`boig llm export-merged`): serving any other model under it would answer
            # with weights the registry does not point at.
            if name not in served:
                raise ModelUnavailable(
                    f"the vLLM server serves {', '.join(served)}, not {name}: start it on "
                    f"`boig llm export-merged --version {checkpoint.version}` with "
                    f"--served-model-name {name}"
                )
        else:
            backend.load_adapter(name, _server_path(checkpoint.path, settings), served)
        backend._model = name
        backend._info = ModelInfo(
            name=name, version=f"{checkpoint.version}+{settings.vllm_adapters}+{base_version}"
        )
        return backend

    # --- LlmBackend (identity, profile and chat template: ServedModel) ---------------

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
        if not prompts:
            return []
        expressions = regex_per_prompt(regex, len(prompts))
        body: dict[str, Any] = {
            "model": self._model,
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "n": samples,
            "skip_special_tokens": True,
        }
        if stop:
            body["stop"] = list(stop)
        # A request carries one expression: prompts that share one travel together, and the
        # groups go out at once, so the server batches them as it would one request.
        groups: dict[str | None, list[int]] = {}
        for index in range(len(prompts)):
            groups.setdefault(None if expressions is None else expressions[index], []).append(index)
        bodies = []
        for expression, members in groups.items():
            group_body = dict(body, prompt=[self._token_ids(prompts[i]) for i in members])
            if expression is not None:
                group_body["structured_outputs"] = {"regex": expression}
            bodies.append(group_body)
        if len(bodies) == 1:
            answers = [self._group_texts(bodies[0], len(prompts), samples)]
        else:
            # Each task runs in a copy of this context, so its log lines keep the request id.
            futures = [
                self._fan_out.submit(
                    contextvars.copy_context().run,
                    self._group_texts,
                    group_body,
                    len(members),
                    samples,
                )
                for group_body, members in zip(bodies, groups.values(), strict=True)
            ]
            answers = [future.result() for future in futures]
        results: list[str] = [""] * (len(prompts) * samples)
        for members, texts in zip(groups.values(), answers, strict=True):
            for position, index in enumerate(members):
                results[index * samples : (index + 1) * samples] = texts[
                    position * samples : (position + 1) * samples
                ]
        return results

    def _group_texts(self, body: dict[str, Any], prompts: int, samples: int) -> list[str]:
        choices = self._completions(body)
        if len(choices) != prompts * samples:
            raise BackendError(f"vLLM answered {len(choices)} completions for {prompts * samples}")
        # Choice i * n + j is prompt i's j-th sample; order by index, whatever the wire order.
        return [str(choice["text"]) for choice in sorted(choices, key=lambda c: int(c["index"]))]

    def continuation_logprobs(
        self, prompts: list[str], continuations: list[str]
    ) -> list[list[float]]:
        if not continuations:
            return [[] for _ in prompts]
        if not all(continuations):
            raise ValueError("continuations must be non-empty strings")
        joints: list[list[int]] = []
        starts: list[int] = []
        for prompt in prompts:
            # As in the transformers backend: the same joint encodings and shared prefix.
            shared, encoded = joint_encodings(self._token_ids, prompt, continuations)
            joints.extend(encoded)
            starts.extend([shared] * len(encoded))
        choices = self._completions(
            {
                "model": self._model,
                "prompt": joints,
                "max_tokens": 1,
                "temperature": 0.0,
                "prompt_logprobs": 0,
            }
        )
        by_index = {int(choice["index"]): choice for choice in choices}
        scores: list[float] = []
        for row, (joint, start) in enumerate(zip(joints, starts, strict=True)):
            choice = by_index.get(row)
            positions = choice.get("prompt_logprobs") if choice is not None else None
            if not isinstance(positions, list) or len(positions) != len(joint):
                raise BackendError("vLLM answered without the prompt log-probabilities asked for")
            scores.append(
                sum(_token_logprob(positions[t], joint[t]) for t in range(start, len(joint)))
            )
        width = len(continuations)
        return [scores[i * width : (i + 1) * width] for i in range(len(prompts))]

    # --- the server -------------------------------------------------------------------

    def served_models(self) -> dict[str, str]:
        """The model names the server answers to (base model and loaded adapters), each
        with the weights behind it (vLLM's ``root``: a folder, or an adapter's)."""
        data = self._request("GET", "/v1/models").get("data") or []
        served = {
            str(entry["id"]): str(entry.get("root") or "")
            for entry in data
            if isinstance(entry, dict)
        }
        if not served:
            raise ModelUnavailable("the vLLM server serves no model")
        return served

    def load_adapter(self, name: str, path: str, served: Collection[str] = ()) -> None:
        """Load the LoRA folder at ``path`` (as the server sees it) under ``name``; a name
        the server already serves (``served``) is not loaded again, and a server that
        answers that it has it already (a retried load) counts as loaded."""
        self._adapter = (name, path)
        if name in served:
            return
        try:
            self._request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        except BackendError as exc:
            if "already" not in str(exc).lower():
                raise
        logger.info("vLLM loaded adapter %s from %s", name, path)

    def close(self) -> None:
        self._fan_out.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def _completions(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            answer = self._request("POST", "/v1/completions", body)
        except AdapterMissing:
            # A restarted server forgets adapters loaded at run time: load ours again, once.
            if self._adapter is None:
                raise
            name, path = self._adapter
            logger.warning("vLLM no longer serves adapter %s; loading it again", name)
            self.load_adapter(name, path)
            answer = self._request("POST", "/v1/completions", body)
        choices = answer.get("choices")
        if not isinstance(choices, list):
            raise BackendError("vLLM answered a completion without choices")
        return choices

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer, with transport errors and 5xx retried ``retries`` times."""
        attempt = 0
        while True:
            try:
                response = self._client.request(method, path, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Never sent: safe to send again. A read timeout is not retried: the server
                # has the request and is slow, and a second copy would only add to its load.
                failure = f"{type(exc).__name__}"
            except httpx.TransportError as exc:
                raise ModelUnavailable(
                    f"the vLLM server failed {method} {path} ({type(exc).__name__})"
                ) from exc
            else:
                if response.status_code not in RETRIED_STATUSES:
                    break
                failure = f"HTTP {response.status_code}"
            if attempt >= self._retries:
                raise ModelUnavailable(
                    f"the vLLM server did not answer {method} {path} ({failure}) after "
                    f"{attempt + 1} attempts"
                )
            time.sleep(RETRY_BACKOFF_SECONDS * 2**attempt)
            attempt += 1
        if response.status_code == 404 and body is not None and "model" in body:
            raise AdapterMissing(f"vLLM does not serve {body['model']!r}: {response.text[:200]}")
        if response.status_code >= 500:
            raise ModelUnavailable(f"vLLM failed {method} {path} with HTTP {response.status_code}")
        if response.status_code >= 400:
            # The server refused what we sent (a bug here, or a model/adapter it lacks).
            raise BackendError(
                f"vLLM refused {method} {path} with HTTP {response.status_code}: "
                f"{response.text[:300]}"
            )
        if path == "/v1/load_lora_adapter":
            return {}  # answers plain text
        try:
            return response.json()
        except ValueError as exc:
            raise BackendError(f"vLLM answered {method} {path} with something not JSON") from exc

    def _token_ids(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids


def _token_logprob(position: Any, token: int) -> float:
    """The log-probability vLLM reports for ``token`` at one prompt position
    (``{"<id>": {"logprob": ...}}``; the prompt's own token is always among them)."""
    if not isinstance(position, dict) or str(token) not in position:
        raise BackendError(f"vLLM reported no log-probability for prompt token {token}")
    entry = position[str(token)]
    value = entry.get("logprob") if isinstance(entry, dict) else entry
    if not isinstance(value, int | float):
        raise BackendError(f"vLLM reported a log-probability that is not a number: {value!r}")
    return float(value)


def _base_model_name(roots: dict[str, str], settings: DescriberSettings) -> str:
    """The served name of the base model: ``vllm_model`` where set, else the one whose
    weights are ``model_path``. Anything else may be a checkpoint's merged weights, which
    must not be served as the base model (under the base version and prompt)."""
    if settings.vllm_model is not None:
        if settings.vllm_model not in roots:
            raise ModelUnavailable(
                f"the vLLM server serves {', '.join(roots)}, not {settings.vllm_model}"
            )
        return settings.vllm_model
    wanted = str(settings.model_path.resolve())
    for name, root in roots.items():
        if root and Path(root).resolve() == Path(wanted):
            return name
    raise ModelUnavailable(
        f"no model the vLLM server serves ({', '.join(roots)}) has the weights at "
        f"{wanted}; set BOIG_DESCRIBER_VLLM_MODEL to the served name of the base model"
    )


def _server_path(adapter: Path, settings: DescriberSettings) -> str:
    """The adapter folder as the vLLM server sees it: under ``vllm_registry_path`` where the
    server mounts the registry elsewhere (a container), else the same path."""
    if settings.vllm_registry_path is None or settings.checkpoint_registry is None:
        return str(adapter)
    relative = adapter.resolve().relative_to(settings.checkpoint_registry.resolve())
    return str(settings.vllm_registry_path / relative)
