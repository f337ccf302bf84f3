# embedsearch: `make run` starts the stack, `make test` runs the suite. `make help` lists targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/embedsearch/v1/*.proto)
STUBS := embedsearch/v1/.generated
# Where a CPU build of torch lies on disk (these machines), pin it: pip would otherwise pick a
# multi-GB CUDA build for the torch range in pyproject.toml.
WHEELS := /opt/wheels
PIP_LOCAL := $(if $(wildcard $(WHEELS)/torch-2.13.0+cpu-*.whl),--find-links $(WHEELS) -c constraints/cpu.txt,)
# The image, audio and video providers (open-clip, imagebind) need torchvision and torchaudio,
# which do not load beside the CPU torch above: their tests run an embedder from one second
# environment where torch, torchvision and torchaudio are releases built together
# (constraints/multimodal.txt). torchaudio loads here only beside torch 2.9.1, a CUDA build on
# PyPI: about 8 GB and 2 minutes to install.
MULTIMODAL_VENV ?= .venv-multimodal
MULTIMODAL_STAMP := $(MULTIMODAL_VENV)/.installed
ONLY ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help install install-multimodal install-chroma protos run test lint bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(PIP_LOCAL) -e '.[server,test,apis,ray]'
	touch $(STAMP)

$(STUBS): $(STAMP) $(PROTOS)
	mkdir -p embedsearch/v1
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	touch embedsearch/v1/__init__.py $(STUBS)

install: $(STAMP) $(STUBS) ## Create .venv, install the project and generate gRPC stubs from protos/

protos: $(STUBS) ## Regenerate the gRPC stubs

$(MULTIMODAL_STAMP): pyproject.toml constraints/multimodal.txt
	test -x $(MULTIMODAL_VENV)/bin/python || python3 -m venv $(MULTIMODAL_VENV)
	$(MULTIMODAL_VENV)/bin/python -m pip install -q --upgrade pip
	$(MULTIMODAL_VENV)/bin/python -m pip install -q -c constraints/multimodal.txt -e '.[imagebind]'
	touch $(MULTIMODAL_STAMP)

install-multimodal: install $(MULTIMODAL_STAMP) ## A second env (torchvision, torchaudio) for open-clip and imagebind

run: install ## Start gateway, embedder and store on their defaults (./data, all-MiniLM-L6-v2)
	HF_HUB_OFFLINE=1 $(VENV)/bin/embedsearch up --data-dir ./data

test: install install-multimodal ## Run ruff and the test suite
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 GRPC_VERBOSITY=ERROR VISION_PYTHON=$(MULTIMODAL_VENV)/bin/python \
		MULTIMODAL_PYTHON=$(MULTIMODAL_VENV)/bin/python $(PY) -m pytest $(PYTEST_ARGS)

lint: install ## Run ruff
	$(VENV)/bin/ruff check .

bench: install ## Run the benchmarks in bench/ (ONLY=<name> for one); prints JSON lines
	HF_HUB_OFFLINE=1 $(PY) -m bench $(ONLY)

install-chroma: install ## Chroma's own env, a baseline of bench/search_text_e2e.py (made on first use too)
	$(PY) -c "from bench.search_text_e2e import chroma_python; chroma_python()"

clean: ## Remove the virtualenvs and generated stubs
	rm -rf $(VENV) $(MULTIMODAL_VENV) .venv-chroma embedsearch/v1

.PHONY: proto-descriptor prometheus-rule

DESCRIPTOR := protos/embedsearch_v1.binpb

proto-descriptor: $(STAMP) ## Accept the current protos as the wire baseline (tests/test_proto_compat.py)
	$(PY) -m grpc_tools.protoc -I protos --include_imports --descriptor_set_out=$(DESCRIPTOR) $(PROTOS)

prometheus-rule: $(STAMP) ## Regenerate the PrometheusRule in deploy/prometheus/operator from the rule files
	$(PY) deploy/prometheus/operator/make_rule.py
