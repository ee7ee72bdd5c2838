# clipguard: the README's two commands are `make demo` and `make test`; each sets itself up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned first so a CPU build is used where one is available locally
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv test lint demo bench fuzz clean deploy-tools browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test]'
	# open_clip and timm are parity references for tests only; without their dependencies,
	# because torchvision's wheels do not load beside the CPU build of torch (tests/openclip_ref.py)
	$(PY) -m pip install --quiet --no-deps "open_clip_torch==3.3.0" "timm==1.0.31"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline consumers tests bench scripts
	$(VENV)/bin/ruff format --check pipeline consumers tests bench scripts
	$(VENV)/bin/mypy

test: lint deploy-tools browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# docker-compose, promtool and shellcheck for tests/test_deploy.py: Debian packages, installed
# only when missing; without apt-get (or root) the tests that need them skip and say why
DEPLOY_TOOLS := docker-compose promtool shellcheck
DEPLOY_PACKAGES := docker-compose prometheus shellcheck
deploy-tools:
	@missing=0; for tool in $(DEPLOY_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	if [ $$missing = 0 ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "deploy-tools: apt-get install $(DEPLOY_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(DEPLOY_PACKAGES) >/dev/null; \
	else \
		echo "deploy-tools: $(DEPLOY_TOOLS) missing and apt-get unavailable (or not root):" \
			"the deployment tests that need them will skip"; \
	fi

# Debian's chromium for the scan report's browser test (tests/test_scan.py), installed when
# missing; without apt-get (or root) that test skips, except under CI where it fails
browser:
	@if command -v chromium >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "browser: apt-get install chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "browser: chromium missing and apt-get unavailable (or not root): the report's" \
			"browser test will skip"; \
	fi

demo: $(STAMP)
	$(PY) scripts/demo.py

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/bench_encoder.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_scan.py
	$(PY) bench/bench_worker.py
	$(PY) bench/bench_decode.py

# a longer fuzz run of the decode pool than the test suite's (mutated real segments)
fuzz: $(STAMP)
	$(PY) bench/fuzz_decode.py --iterations 200000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
