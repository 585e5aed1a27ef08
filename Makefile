# Two commands do everything on a fresh machine with Python 3.11:
#   make run   creates .venv, installs, ingests the sample book, serves its pages with the widget at http://127.0.0.1:8000
#   make test  creates .venv, installs with the dev tools, runs ruff, mypy and the tests
#   make bench runs the benchmark harness (bench/, figures for docs/benchmarks.md): about 10 minutes
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
BOOK   ?= sample_book
# The benchmarks' book (real chapters, padded to 5,000 chunks) and the book whose ingest is timed.
BENCH_BOOK        ?= /work/shared/corpus/humanoid-book
BENCH_INGEST_BOOK ?= /work/shared/corpus/humanoid-book
# The streaming routes compared; bookrag's other routes are opt-in: add bookrag-openai,bookrag-aisdk.
BENCH_TARGETS     ?= bookrag,reference,langserve

.PHONY: run test install chromium js-deps lint typecheck pytest ingest serve clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"

# torch is pinned in pyproject to the CPU build pip finds locally; installing it first keeps pip from
# resolving a CUDA build for sentence-transformers.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The AI SDK client test (tests/test_chat_js.py) runs the `ai` package pinned in tests/js; without npm it skips.
JS_DEPS := tests/js/node_modules/.package-lock.json
$(JS_DEPS): tests/js/package.json tests/js/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/js --prefer-offline --no-audit --no-fund --loglevel=error; \
	else \
		echo "npm not found: not installing tests/js; the AI SDK client test (tests/test_chat_js.py) will be skipped"; \
	fi

js-deps: $(JS_DEPS)

ingest: install
	$(BIN)/rag-ingest $(BOOK) --prune

# The book's own pages at /book/ with the widget on them, sources linking there (override either variable).
serve: install
	BOOK_SITE_DIR=$${BOOK_SITE_DIR-$(BOOK)} BOOK_BASE_URL=$${BOOK_BASE_URL-http://$(HOST):$(PORT)/book/} \
		$(BIN)/rag-api --host $(HOST) --port $(PORT)

run: ingest serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# The browser test (tests/test_browser.py) drives Debian's chromium through Playwright (never `playwright install`).
# Installed here when we are root with apt-get; otherwise say why that test will skip.
CHROMIUM ?= /usr/bin/chromium
APT_CHROMIUM := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
chromium:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser test"; \
		$(APT_CHROMIUM) || { apt-get update -qq && $(APT_CHROMIUM); } \
			|| echo "chromium could not be installed: the browser test will skip"; \
	else echo "no $(CHROMIUM) and not root with apt-get: the browser test will skip"; fi

pytest: install chromium js-deps
	CHROMIUM=$(CHROMIUM) $(BIN)/pytest

test: lint typecheck pytest

# The bench extra (LangServe) is installed here only, so that `make test` stays lean.
bench: install
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	mkdir -p bench/results
	$(BIN)/python -m bench.stream_bench --book $(BENCH_BOOK) --targets $(BENCH_TARGETS) --out bench/results/stream.json
	$(BIN)/python -m bench.retrieval_bench
	$(BIN)/python -m bench.ingest_bench $(BENCH_INGEST_BOOK)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .bench-cache tests/js/node_modules
