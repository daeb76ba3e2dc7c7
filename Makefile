# The two commands: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit shells browser screenshots torture fuzz fuzz-cli bench clean tools mutants postgres cc

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

run: $(STAMP)
	$(BIN)/phxqd

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check phxqd phxqctl tests bench fuzz
	$(BIN)/ruff format --check phxqd phxqctl tests bench fuzz

typecheck: $(STAMP)
	$(BIN)/mypy --strict phxqd phxqctl fuzz bench

unit: $(STAMP) shells cc tools browser postgres
	$(BIN)/python -m pytest -q

# zsh and fish for the completion tests (bash and tmux are there already). Installed when
# missing and we can (root with apt-get, as in CI); otherwise those tests skip, saying so,
# except under CI=1 where a missing shell fails them.
shells:
	@export DEBIAN_FRONTEND=noninteractive; command -v zsh >/dev/null && command -v fish >/dev/null && command -v tmux >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q zsh fish tmux >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q zsh fish tmux >/dev/null; }; }; } || \
	echo "zsh/fish/tmux missing and not installable here: their tests will skip"

# Debian's chromium and its chromedriver for the dashboard's browser tests, the same way:
# installed when missing (root with apt-get), else those tests skip, or fail under CI=1.
browser:
	@export DEBIAN_FRONTEND=noninteractive; command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; }; } || \
	echo "chromium/chromedriver missing and not installable here: the browser tests will skip"

# the dashboard's screenshots in docs/ (README shows one): a made-up day in headless Chromium
screenshots: $(STAMP) browser
	$(BIN)/python -m tests.web_screenshots docs

# changes that break phxq (tests/mutants/mutants.toml), each applied to a copy of the tree
# with the tests named for it run: prints which ones no test noticed. Not part of `test`.
mutants: $(STAMP) tools
	$(BIN)/python -m tests.mutants.run $(if $(ONLY),--only '$(ONLY)')

# strace (the fsync-order and syscall-filter tests), a C compiler (the EIO shim of
# test_faults) and systemd-analyze (test_units), installed as `shells` installs its
# shells. Without them those tests skip, saying so, except under CI=1 where they fail.
TOOLS := strace:strace cc:gcc systemd-analyze:systemd
tools:
	@export DEBIAN_FRONTEND=noninteractive; missing=; \
	for t in $(TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	[ -z "$$missing" ] || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && \
	      apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; }; } || \
	echo "$$missing missing and not installable here: their tests will skip"

# PostgreSQL for the tests of the PostgreSQL backend (tests/pgfixture.py starts a throwaway
# cluster of its own; the server Debian's package may start is not used). Installed when
# missing and we can (root with apt-get, as in CI); otherwise those tests skip, saying so,
# except under CI=1 where a missing PostgreSQL fails them.
postgres:
	@export DEBIAN_FRONTEND=noninteractive; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q postgresql >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }; }; } || \
	echo "PostgreSQL missing and not installable here: its tests will skip"

# gcc for the LD_PRELOAD shims of the fault and power-cut tests (compiled by the tests),
# installed like the shells above; under CI=1 the power-cut tests fail without it.
cc:
	@export DEBIAN_FRONTEND=noninteractive; command -v gcc >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q gcc libc6-dev >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q gcc libc6-dev >/dev/null; }; }; } || \
	echo "gcc missing and not installable here: the power-cut tests will skip"

# 500 kill -9 cycles under load (make test runs 20), and 100 power cuts for each model and
# fsync policy (make test runs 5 each)
torture: $(STAMP) cc
	PHXQ_TORTURE_CYCLES=500 $(BIN)/python -m pytest -q tests/test_torture.py
	PHXQ_POWERCUT_CYCLES=100 $(BIN)/python -m pytest -q tests/test_powercut.py

# coverage-guided fuzzing of the request path (atheris, pip extra `fuzz`), not part of
# `test` (which replays the seeds and fuzz/regressions/). FUZZ_SECONDS=60 by default; a
# crash is written to .fuzz/artifacts/: replay it with `$(BIN)/python fuzz/fuzz_requests.py FILE`
# and, once fixed, copy it into fuzz/regressions/.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,fuzz]'
	@mkdir -p .fuzz/corpus .fuzz/artifacts
	$(BIN)/python fuzz/fuzz_requests.py -max_total_time=$(FUZZ_SECONDS) \
		-dict=fuzz/requests.dict -artifact_prefix=.fuzz/artifacts/ \
		.fuzz/corpus fuzz/corpus fuzz/regressions

# phxqctl's arguments fuzzed with hypothesis against a real phxqd (tests/test_cli_fuzz.py),
# CLI_FUZZ_EXAMPLES runs (make test runs 400): no traceback, only documented exit statuses
CLI_FUZZ_EXAMPLES ?= 5000
fuzz-cli: $(STAMP)
	CLI_FUZZ_EXAMPLES=$(CLI_FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_cli_fuzz.py

# phxq and its peers side by side (huey, RQ, Celery, task-spooler, nq), not part of `test`:
# installs them (pip extra `bench`; Debian packages when missing and root), writes
# docs/benchmarks.md. QUICK=1: small counts, under 2 minutes, prints only. ONLY=enqueue...
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run --install $(if $(QUICK),--quick,--write docs/benchmarks.md) \
		$(if $(ONLY),--only $(ONLY))

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .fuzz
