"""Test-wide setup: no network model hubs, ever; the tiny-Llama builder model tests share;
databases for the store tests: SQLite in tmp_path, and the real PostgreSQL and Redis (marked);
artifact stores: a local folder and an S3 bucket on a loopback moto server.

Each PostgreSQL test gets its own schema (search_path set per connection), dropped
afterwards, so tests never see or leave rows in anybody else's tables.
"""

import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from services.common.db import Database
from services.generator.tiny_pipeline import prepare_tiny_pipeline
from tests.artifact_stores import (
    BACKENDS,
    StoreUnderTest,
    local_store,
    moto_server,
    s3_credentials,
    s3_store,
)
from tests.servers import POSTGRES_URL, REDIS_URL, server_missing

# Set before any test module imports transformers/ultralytics, which read them at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


TinyLlamaBuilder = Callable[[Iterable[str], int], Path]

# ChatML, as SmolLM2 uses: the tiny models render prompts the way the real one does.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def build_tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> TinyLlamaBuilder:
    """Build a 2-layer Llama (hidden 64) with a byte-level BPE trained on ``corpus``.

    No pad token on purpose: code under test must fall back to eos, as with many base models.
    """

    def build(corpus: Iterable[str], vocab_size: int) -> Path:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(corpus, trainer)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            unk_token="<|endoftext|>",
        )
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=bpe.get_vocab_size(),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model = LlamaForCausalLM(config)
        # Larger-than-default weights give peaked, input-dependent distributions: mistakes in
        # position or padding handling show up as large log-prob differences, and small LoRA
        # updates can move the output within a few dozen steps.
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() > 1:
                    parameter.normal_(0.0, 0.2)
        folder = tmp_path_factory.mktemp("tiny-llama")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    return build


def postgres_schema_or_skip() -> tuple[str, str]:
    """Create a throwaway schema; return (database URL using it, schema name)."""
    psycopg = pytest.importorskip("psycopg")
    schema = f"boig_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        server_missing(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}")
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", schema


def drop_postgres_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def postgres_database() -> Iterator[Database]:
    """A Database on a throwaway PostgreSQL schema (schema not created), dropped after."""
    url, schema = postgres_schema_or_skip()
    db = Database(url)
    try:
        yield db
    finally:
        db.dispose()
        drop_postgres_schema(schema)


@pytest.fixture
def postgres_db() -> Iterator[Database]:
    """The real PostgreSQL, a schema of its own; mark the test ``postgres``."""
    with postgres_database() as db:
        yield db


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
        db.create_schema()
        yield db
        db.dispose()
        return
    with postgres_database() as db:
        db.create_schema()
        yield db


@pytest.fixture(scope="session")
def moto_s3_endpoint() -> Iterator[str]:
    """An S3-compatible server on loopback (moto in server mode) for the whole session."""
    with moto_server() as endpoint_url:
        yield endpoint_url


@pytest.fixture(params=BACKENDS)
def artifact_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StoreUnderTest:
    """Each artifact-store test runs against the local folder and an S3 bucket on loopback."""
    if request.param == "local":
        return local_store(tmp_path / "artifacts")
    s3_credentials(monkeypatch)
    return s3_store(request.getfixturevalue("moto_s3_endpoint"))


@pytest.fixture(scope="session")
def make_boigsd_lora() -> Callable[[Path, Path, int], Path]:
    """What the DDPO trainer writes, for tests: a BoigSD LoRA folder with random, nonzero
    weights (LoRA B starts at zero, which would change nothing) on the pipeline at a path."""

    def make(model: Path, folder: Path, seed: int) -> Path:
        import torch

        from services.common.boigsd_lora import add_boigsd_lora, save_boigsd_lora
        from services.generator.pipeline import ImagePipeline

        trainer = ImagePipeline(model)
        add_boigsd_lora(trainer.pipe.unet, rank=2, alpha=2)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in trainer.pipe.unet.named_parameters():
                if ".lora_B." in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        return save_boigsd_lora(trainer.pipe, folder, base_model=model.name)

    return make


@pytest.fixture
def drain_queue() -> Callable[[Any, str], list[str]]:
    """Empty a Celery app's broker queue; returns the ids of the tasks that were on it."""

    def drain(celery: Any, queue_name: str) -> list[str]:
        ids = []
        with celery.connection_for_read() as connection:
            queue = connection.SimpleQueue(queue_name)
            try:
                while True:
                    message = queue.get(block=True, timeout=0.3)
                    ids.append(message.headers["id"])
                    message.ack()
            except queue.Empty:
                pass
            finally:
                queue.close()
        return ids

    return drain


@pytest.fixture
def redis_url() -> str:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        server_missing(f"Redis at {REDIS_URL} is unreachable: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Stable Diffusion pipeline folder (model_index.json, safetensors)."""
    return prepare_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """The tiny models' ops take microseconds: a second OpenMP thread only adds sync cost, and
    when another process holds the other core, two spinning threads made a step ~50x slower.

    Module-scoped, so that it also covers the module-scoped pipelines (set up before any
    function-scoped fixture); torch's setting is restored after each module.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_UNDOCUMENTED = pytest.StashKey[list[str]]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a service answered one of its operations with a status that its
    OpenAPI does not document: the contracts must say what the services send."""
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return
    from tests.documented_statuses import undocumented_answers

    problems = undocumented_answers()
    if problems:
        session.config.stash[_UNDOCUMENTED] = problems
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    problems = config.stash.get(_UNDOCUMENTED, [])
    if problems:
        terminalreporter.section("answers their OpenAPI does not document", red=True)
        for problem in problems:
            terminalreporter.line(problem)
