# clipguard: the README's two commands are `make demo` and `make test`; each sets itself up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned first so a CPU build is used where one is available locally
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv test lint style demo bench fuzz clean test-tools deploy-tools browser build-headers

venv: $(STAMP)

# FFmpeg's development libraries and pkg-config: pip builds vpdq (the `vpdq` extra, vPDQ's
# reference hasher the hash tests compare with; `make test` installs it) against them. Debian
# packages, installed only when pkg-config cannot find the libraries; without apt-get (or root)
# it says what to install and stops, as pip would fail to build vpdq.
LIBAV_MODULES := libavcodec libavformat libavutil libswscale libavdevice libavfilter libswresample
LIBAV_PACKAGES := pkg-config libavcodec-dev libavformat-dev libavutil-dev libswscale-dev \
	libavdevice-dev libavfilter-dev libswresample-dev
HAVE_LIBAV := pkg-config --exists $(LIBAV_MODULES) 2>/dev/null
build-headers:
	@if $(HAVE_LIBAV); then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "build-headers: apt-get install $(LIBAV_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(LIBAV_PACKAGES) >/dev/null; \
	else \
		echo "build-headers: FFmpeg's development libraries are missing and apt-get is" \
			"unavailable (or not root); install them for pip to build vpdq (Debian:" \
			"$(LIBAV_PACKAGES))" >&2; \
		exit 1; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test]'
	# open_clip and timm are parity references for tests only; without their dependencies,
	# because torchvision's wheels do not load beside the CPU build of torch (tests/openclip_ref.py)
	$(PY) -m pip install --quiet --no-deps "open_clip_torch==3.3.0" "timm==1.0.31"
	touch $(STAMP)

lint: style $(STAMP)
	$(VENV)/bin/mypy

style: $(STAMP)
	$(VENV)/bin/ruff check pipeline consumers tests bench scripts
	$(VENV)/bin/ruff format --check pipeline consumers tests bench scripts

# two pytest processes, each test file whole in one of them (module fixtures built once):
# most long tests wait on brokers and worker processes, so two share two cores well
TEST_WORKERS ?= 2
# the test venv adds vPDQ's reference hasher, built against FFmpeg's development libraries
TEST_STAMP := $(VENV)/.installed-test
$(TEST_STAMP): $(STAMP) | build-headers
	$(PY) -m pip install --quiet -e '.[vpdq]'
	touch $(TEST_STAMP)

# test-tools first: on a new machine its one apt-get brings the build headers vpdq needs too
# mypy (about 40 s from a cold cache) checks types beside the tests rather than before them:
# the test processes spend much of their time waiting on brokers and child processes. Its
# report follows the tests' and either one failing fails the target.
test: test-tools style $(TEST_STAMP)
	@$(VENV)/bin/mypy > $(VENV)/mypy.log 2>&1 & types=$$!; \
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile; tests=$$?; \
	wait $$types; typed=$$?; echo "mypy:"; cat $(VENV)/mypy.log; \
	exit $$(( tests != 0 ? tests : typed ))

# The system tools the tests use, Debian packages installed only when missing (one
# `apt-get update` for all of them): docker-compose, promtool and shellcheck for
# tests/test_deploy.py, chromium for the scan report's browser test (tests/test_scan.py), and
# FFmpeg's development libraries for vpdq (build-headers above, which then has nothing to do).
# Without apt-get (or root) the tests that need them skip and say why; the browser and vPDQ
# reference tests fail under CI instead.
DEPLOY_TOOLS := docker-compose promtool shellcheck
DEPLOY_PACKAGES := docker-compose prometheus shellcheck
test-tools:
	@deploy=""; for tool in $(DEPLOY_TOOLS); do command -v $$tool >/dev/null || deploy="$(DEPLOY_PACKAGES)"; done; \
	browser=""; command -v chromium >/dev/null || browser=chromium; \
	headers=""; $(HAVE_LIBAV) || headers="$(LIBAV_PACKAGES)"; \
	if [ -z "$$deploy$$browser$$headers" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "test-tools: apt-get install $$deploy $$headers $$browser"; \
		apt-get update -qq && \
		if [ -n "$$deploy$$headers" ]; then DEBIAN_FRONTEND=noninteractive apt-get install \
			-y -qq --no-install-recommends $$deploy $$headers >/dev/null; fi && \
		if [ -n "$$browser" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			$$browser >/dev/null; fi; \
	else \
		echo "test-tools: $$deploy $$headers $$browser missing and apt-get unavailable (or not root):" \
			"the tests that need them will skip"; \
	fi

# the two halves by their old names
deploy-tools browser: test-tools

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
