# packager: the two commands the README promises.
#   make demo   set up, export the embedded default model, verify parity, build a Triton repo,
#               serve it with a real tritonserver, query it, stop.
#   make test   set up and run the whole test suite (what .ci/run calls).
#   make check  the fast development loop: unit tests + the default model's export, no servers,
#               containers, registries or slow cases (about 4 minutes on 2 cores).
SHELL := /bin/bash
PYTHON ?= python3
# The venv is cached outside the clone, keyed by the hash of the pinned requirements,
# so a fresh clone on the same machine reuses it (it is about 4 GB and takes minutes to build).
REQ_HASH := $(shell cat requirements.txt | sha256sum | cut -c1-16)
VENV ?= $(HOME)/.cache/packager/venv-$(REQ_HASH)
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TF_CPP_MIN_LOG_LEVEL := 2
PYTEST_ARGS ?=

.PHONY: venv demo test check bench clean
venv: $(VENV)/.complete
	@ln -sfn $(VENV) .venv
	@# editable install of this clone (cheap; re-pointed for each clone sharing the cached venv)
	@if [ "$$(cat $(VENV)/.editable 2>/dev/null)" != "$(CURDIR)" ]; then \
	  $(PY) -m pip install -q --no-deps --no-build-isolation -e . && echo "$(CURDIR)" > $(VENV)/.editable; fi

# No file prerequisite: the hash in the path is the cache key (a fresh clone has new mtimes).
$(VENV)/.complete:
	@echo "building venv $(VENV) (first run only; several minutes)"
	rm -rf $(VENV).tmp && $(PYTHON) -m venv $(VENV).tmp
	$(VENV).tmp/bin/pip install -q --upgrade "pip>=24" setuptools wheel
	$(VENV).tmp/bin/pip install -q -r requirements.txt
	@# venvs are not relocatable: rewrite the shebangs, then move into place atomically
	grep -rlI "$(VENV).tmp" $(VENV).tmp/bin | xargs -r sed -i "s#$(VENV).tmp#$(VENV)#g"
	sed -i "s#$(VENV).tmp#$(VENV)#g" $(VENV).tmp/pyvenv.cfg
	rm -rf $(VENV) && mv $(VENV).tmp $(VENV) && touch $@

PKG := $(PY) -m packager
DEMO := build/demo
demo: venv
	$(PKG) export -o $(DEMO)/export --force
	$(PKG) verify --export $(DEMO)/export
	$(PKG) embed --export $(DEMO)/export "How do I reset my password?" "Wie setze ich mein Passwort zurück?" "中文句子"
	$(PKG) build --target triton -o $(DEMO)/model_repository --compose-dir $(DEMO)/compose --force
	$(PKG) serve $(DEMO)/model_repository --check

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The fast loop: unit tests of every stage plus the default model's export (~4 min on 2 cores);
# the tokenizer, encoder and per-architecture parity suites run in `make test`.
CHECK_TESTS := tests/test_structure.py tests/test_source.py tests/test_modules.py tests/test_settings.py \
	tests/test_target_triton.py tests/test_target_tfserving.py tests/test_compose.py tests/test_kubernetes.py \
	tests/test_oplibs.py tests/test_export.py
check: venv
	$(PY) -m pytest -q -m "not slow and not server and not container and not network" $(CHECK_TESTS) \
	  -k "not (test_export and (tiny_ or xlmr or mpnet or qwen or modernbert or roberta))" $(PYTEST_ARGS)

bench: venv
	$(PY) bench/run.py

clean:
	rm -rf .venv model_repository/* exports build
