"""The vLLM backend's side of the wire, against a scripted server (httpx.MockTransport): what it
sends, how it reads answers, retries, typed errors and checkpoints. The real server is in
tests/integration/test_vllm_backend.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.checkpoints import CheckpointRef, served_model_name
from services.common.errors import BackendError, ModelUnavailable
from services.describer.backends.common import common_prefix_length
from services.describer.backends.vllm_backend import VllmBackend
from services.describer.settings import DescriberSettings

Handler = Callable[[httpx.Request], httpx.Response]


class Server:
    """Answers /v1/models with ``models`` and everything else with ``answer``; logs bodies."""

    def __init__(
        self,
        answer: Handler | None = None,
        models: tuple[str, ...] = ("smollm2",),
        root: str = "",
    ):
        self.models = list(models)
        self.root = root
        self.answer = answer
        self.requests: list[tuple[str, dict[str, Any] | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.url.path, body))
        if request.url.path == "/v1/models":
            data = [
                {"id": name, "root": self.root if i == 0 else name}
                for i, name in enumerate(self.models)
            ]
            return httpx.Response(200, json={"data": data})
        if request.url.path == "/v1/load_lora_adapter":
            self.models.append(body["lora_name"])
            return httpx.Response(200, text="Success")
        assert self.answer is not None
        return self.answer(request)


def backend(
    tiny_model_dir: Path,
    server: Server,
    checkpoint: CheckpointRef | None = None,
    **overrides: Any,
) -> VllmBackend:
    if not server.root:
        server.root = str(tiny_model_dir)  # the server serves our base model's weights
    settings = DescriberSettings(
        backend="vllm", model_path=tiny_model_dir, history_path=None, **overrides
    )
    client = httpx.Client(base_url="http://vllm.test", transport=httpx.MockTransport(server))
    return VllmBackend.from_settings(settings, checkpoint=checkpoint, client=client)


def completions(texts: list[str], order: list[int] | None = None) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        indices = order or list(range(len(texts)))
        choices = [{"index": i, "text": texts[i]} for i in indices]
        return httpx.Response(200, json={"choices": choices})

    return answer


def test_generate_sends_token_ids_and_the_grammar_and_orders_choices_by_index(
    tiny_model_dir: Path,
) -> None:
    server = Server(completions(["a0", "a1", "b0", "b1"], order=[2, 0, 3, 1]))
    llm = backend(tiny_model_dir, server)

    texts = llm.generate(
        ["colors:", "tones:"], max_new_tokens=9, temperature=0.5, samples=2, regex="x+"
    )

    assert texts == ["a0", "a1", "b0", "b1"]
    path, body = server.requests[-1]
    assert path == "/v1/completions"
    assert body is not None
    assert body["model"] == "smollm2"
    assert body["n"] == 2 and body["max_tokens"] == 9 and body["temperature"] == 0.5
    assert body["structured_outputs"] == {"regex": "x+"}
    assert body["prompt"][0] == llm._token_ids("colors:")  # token ids, read as we read them


def test_prompts_with_different_expressions_go_as_one_request_per_expression(
    tiny_model_dir: Path,
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        tag = body["structured_outputs"]["regex"]
        choices = [
            {"index": i * 2 + j, "text": f"{tag}{i}{j}"}
            for i in range(len(body["prompt"]))
            for j in range(2)
        ]
        return httpx.Response(200, json={"choices": choices})

    server = Server(answer)
    llm = backend(tiny_model_dir, server)

    texts = llm.generate(["p", "q", "r"], max_new_tokens=9, samples=2, regex=["a", "b", "a"])

    # Each prompt's samples in place, from the request that carried its expression.
    assert texts == ["a00", "a01", "b00", "b01", "a10", "a11"]
    sent = sorted(
        (body["structured_outputs"]["regex"], body["prompt"])
        for path, body in server.requests
        if path == "/v1/completions" and body is not None
    )
    assert sent == [
        ("a", [llm._token_ids("p"), llm._token_ids("r")]),
        ("b", [llm._token_ids("q")]),
    ]
    with pytest.raises(ValueError, match="2 expressions for 3 prompts"):
        llm.generate(["p", "q", "r"], max_new_tokens=9, regex=["a", "b"])


def test_continuation_logprobs_sum_the_prompt_logprobs_of_each_continuation(
    tiny_model_dir: Path,
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        prompts = json.loads(request.content)["prompt"]
        choices = []
        for index, ids in enumerate(prompts):
            # Every position's own token at -0.5, plus a distractor: the sum is -0.5 x tail.
            positions = [None] + [
                {str(t): {"logprob": -0.5}, "1": {"logprob": -9}} for t in ids[1:]
            ]
            choices.append({"index": index, "text": "", "prompt_logprobs": positions})
        return httpx.Response(200, json={"choices": choices})

    llm = backend(tiny_model_dir, Server(answer))
    prompt = "level:"
    continuations = [" low", " medium", " high"]

    scores = llm.continuation_logprobs([prompt], continuations)

    prompt_ids = llm._token_ids(prompt)
    joints = [llm._token_ids(prompt + continuation) for continuation in continuations]
    shared = min(common_prefix_length(prompt_ids, joint) for joint in joints)
    assert scores[0] == pytest.approx([-0.5 * (len(joint) - shared) for joint in joints])


def test_transport_failures_are_retried_then_a_typed_unavailable(tiny_model_dir: Path) -> None:
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    llm = backend(tiny_model_dir, Server(answer), vllm_retries=2)
    with pytest.raises(ModelUnavailable, match="after 3 attempts"):
        llm.generate(["x"], max_new_tokens=2)
    assert len(calls) == 3


def test_a_5xx_is_retried_and_a_later_answer_is_used(tiny_model_dir: Path) -> None:
    answers = iter(
        [httpx.Response(503), httpx.Response(200, json={"choices": [{"index": 0, "text": "ok"}]})]
    )
    llm = backend(tiny_model_dir, Server(lambda request: next(answers)), vllm_retries=1)
    assert llm.generate(["x"], max_new_tokens=2) == ["ok"]


def test_a_refused_request_is_a_backend_error_not_retried(tiny_model_dir: Path) -> None:
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(400, json={"error": "bad regex"})

    llm = backend(tiny_model_dir, Server(answer))
    with pytest.raises(BackendError, match="HTTP 400"):
        llm.generate(["x"], max_new_tokens=2, regex="(")
    assert len(calls) == 1


def test_a_short_answer_is_a_backend_error(tiny_model_dir: Path) -> None:
    llm = backend(tiny_model_dir, Server(completions(["only one"])))
    with pytest.raises(BackendError, match="1 completions for 2"):
        llm.generate(["x", "y"], max_new_tokens=2)


def test_a_lora_checkpoint_is_loaded_once_under_its_name_then_requested(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    checkpoint = CheckpointRef(name="boigllm", version="v7", path=tmp_path / "v7")
    checkpoint.path.mkdir()
    server = Server(completions(["ok"]))

    llm = backend(tiny_model_dir, server, checkpoint, vllm_adapters="lora")
    backend(tiny_model_dir, server, checkpoint, vllm_adapters="lora")  # a second describer
    llm.generate(["x"], max_new_tokens=2)

    loads = [body for path, body in server.requests if path == "/v1/load_lora_adapter"]
    assert loads == [
        {"lora_name": served_model_name(checkpoint), "lora_path": str(checkpoint.path)}
    ]
    assert server.requests[-1][1]["model"] == "boigllm-v7"  # type: ignore[index]
    assert llm.info.version.startswith("v7+lora+")


def test_a_merged_checkpoint_needs_the_server_to_serve_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    checkpoint = CheckpointRef(name="boigllm", version="v7", path=tmp_path / "v7")
    checkpoint.path.mkdir()

    with pytest.raises(ModelUnavailable, match="not boigllm-v7"):
        backend(tiny_model_dir, Server(), checkpoint, vllm_adapters="merged")
    served = backend(tiny_model_dir, Server(models=("boigllm-v7",)), checkpoint)
    assert served.info.name == "boigllm-v7"


def test_the_base_model_is_only_what_serves_model_path(tiny_model_dir: Path) -> None:
    # A server started on a checkpoint's merged weights must not pass for the base model.
    merged = Server(models=("boigllm-v7",), root="/exports/boigllm-v7")
    with pytest.raises(ModelUnavailable, match="VLLM_MODEL"):
        backend(tiny_model_dir, merged)
    named = backend(
        tiny_model_dir, Server(models=("smollm2",), root="/elsewhere"), vllm_model="smollm2"
    )
    assert named.info.name == "smollm2"


def test_a_read_timeout_is_not_sent_again(tiny_model_dir: Path) -> None:
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("slow", request=request)

    llm = backend(tiny_model_dir, Server(answer), vllm_retries=3)
    with pytest.raises(ModelUnavailable, match="ReadTimeout"):
        llm.generate(["x"], max_new_tokens=2)
    assert len(calls) == 1


def test_a_restarted_server_gets_the_adapter_again(tiny_model_dir: Path, tmp_path: Path) -> None:
    checkpoint = CheckpointRef(name="boigllm", version="v7", path=tmp_path / "v7")
    checkpoint.path.mkdir()
    server = Server(completions(["ok"]))
    llm = backend(tiny_model_dir, server, checkpoint, vllm_adapters="lora")
    server.models.remove("boigllm-v7")  # the server restarted: run-time adapters are gone
    answer = server.answer

    def forgetful(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["model"] not in server.models:
            return httpx.Response(404, json={"error": "model does not exist"})
        assert answer is not None
        return answer(request)

    server.answer = forgetful

    assert llm.generate(["x"], max_new_tokens=2) == ["ok"]
    loads = [path for path, _ in server.requests if path == "/v1/load_lora_adapter"]
    assert len(loads) == 2
