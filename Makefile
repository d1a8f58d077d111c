# lalmpipe: make demo (a short benchmark against a real local server), make test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# make bench: against any OpenAI-compatible server
BASE_URL   ?=
MODEL      ?=
MODELS     ?= $(MODEL)
ROUNDS     ?= 231
MAX_TOKENS ?= 32768
CHAT_ARGS  ?=
LOGS       ?= logs

.PHONY: install server-bin server server-stop demo bench report test perf clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

server-bin: install
	$(BIN)/python -m lalmpipe.localserver fetch

server: server-bin
	@$(BIN)/python -m lalmpipe.localserver start

server-stop:
	@$(BIN)/python -m lalmpipe.localserver stop

demo: server-bin
	@$(BIN)/python -m lalmpipe.localserver run -- \
	  $(MAKE) --no-print-directory bench ROUNDS=8 MAX_TOKENS=160 CHAT_ARGS="$(CHAT_ARGS)"

bench: install
	@mkdir -p $(LOGS); set -e; ts=$$(date -u +%Y%m%dT%H%M%SZ); \
	for m in $(or $(MODELS),_); do \
	  name=$(LOGS)/lalm_benchmark_run_$$ts$$( [ "$$m" = _ ] || echo "_$$m" | tr '/: ' '___'); \
	  $(BIN)/lalm-prompts --num-rounds $(ROUNDS) \
	  | $(BIN)/lalm-chat $(if $(BASE_URL),--base-url $(BASE_URL)) $$( [ "$$m" = _ ] || echo --model $$m ) \
	      --max-tokens $(MAX_TOKENS) --output $$name.jsonl $(CHAT_ARGS) \
	  | $(BIN)/lalm-metrics > $$name.metrics.jsonl; \
	  $(BIN)/lalm-report --format json $$name.metrics.jsonl > $$name.json; \
	  $(BIN)/lalm-report $$name.metrics.jsonl; \
	  echo "recording: $$name.jsonl  report: $$name.json" >&2; \
	done

report: install
	@test -n "$(RUN)" || { echo "usage: make report RUN=logs/lalm_benchmark_run_....jsonl" >&2; exit 2; }
	@$(BIN)/lalm-metrics $(RUN) | $(BIN)/lalm-report

test: server-bin
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
