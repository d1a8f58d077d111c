# lalmpipe: make demo (a short benchmark against a real local server), make test.
# make server / make demo MODEL=qwen2.5-coder-0.5b|smollm2-135m|gemma3-270m (default: the first; other engines: the second)
# make server / make demo ENGINE=vllm|llama-cpp-python|transformers|llama.cpp [CTX=N] (default: llama.cpp)
# make server / make demo SERVER_ARGS='-ctk q8_0 -ctv q8_0 -fa on': more arguments for the engine
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# make bench: against any OpenAI-compatible server; MODEL is also the model the
# project's own server serves (make server, make demo)
BASE_URL   ?=
MODEL      ?=
MODELS     ?= $(MODEL)
ROUNDS     ?= 231
MAX_TOKENS ?= 32768
# more flags for lalm-chat, and for every lalm-report the target runs (e.g. --min-fact-age 4)
CHAT_ARGS  ?=
REPORT_ARGS ?=
LOGS       ?= logs
# make depth: the turns at DEPTHS (in tokens) of the reference conversation, or over a
# fixed HISTORY only the turns AT (prompt ids); each answer at most DEPTH_MAX_TOKENS
DEPTHS     ?=
HISTORY    ?=
AT         ?=
DEPTH_MAX_TOKENS ?= 128
# a deep request's prefill on a CPU can take many minutes before its first token (16k tokens
# with a q4_0 KV cache on 2 cores: about 20): lalm-chat's stall timeout for depth runs
DEPTH_STALL_TIMEOUT ?= 1800
# the engine make server / make demo start (empty: llama.cpp), its window (empty: the model's)
# and more arguments for it
ENGINE      ?=
CTX         ?=
SERVER_ARGS ?=
ENGINE_ARGS = $(if $(ENGINE),--engine $(ENGINE)) $(if $(MODEL),--model $(MODEL)) $(if $(CTX),--ctx $(CTX)) \
              $(if $(SERVER_ARGS),--server-args='$(SERVER_ARGS)')
# the built server, the models and the engines: the checkout's .cache (a pip-installed
# lalmpipe keeps them in the user's cache folder instead)
LALM_CACHE  ?= $(CURDIR)/.cache
export LALM_CACHE
ENGINE_TESTS = tests/engines
# another engine installs itself and fetches its own model on start: no llama-server build for it
OTHER_ENGINE  = $(filter-out llama.cpp,$(ENGINE))
ENGINE_PREREQ = $(if $(OTHER_ENGINE),install,server-bin)
# the demo: on llama.cpp enough turns for the recall of the planted facts to fall (a few
# minutes on 2 cores); on another engine (SmolLM2, slower engines) 8: it shows the engine
DEMO_ROUNDS   = $(if $(OTHER_ENGINE),8,40)
DEMO_PROBES   = $(if $(OTHER_ENGINE),4,10)
DEMO_FACT_AGE = $(if $(OTHER_ENGINE),2,4)

.PHONY: install server-bin server server-stop demo bench depth compare sweep reference report browser lint test test-fast perf clean \
        engines test-engines record-engines

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[plot,test]'
	@touch $@

server-bin: install
	$(BIN)/python -m lalmpipe.localserver fetch

server: $(ENGINE_PREREQ)
	@$(BIN)/python -m lalmpipe.localserver start $(ENGINE_ARGS)

server-stop:
	@$(BIN)/python -m lalmpipe.localserver stop

# the chat takes the one model the server lists, by the name it serves it under
# (transformers serve answers only to the model's folder, not to MODEL's alias)
demo: $(ENGINE_PREREQ)
	@$(BIN)/python -m lalmpipe.localserver run $(ENGINE_ARGS) -- \
	  $(MAKE) --no-print-directory bench MODEL= MODELS= ROUNDS=$(DEMO_ROUNDS) MAX_TOKENS=64 \
	  CHAT_ARGS="--probe-every $(DEMO_PROBES) --temperature 0 $(CHAT_ARGS)" \
	  REPORT_ARGS="--min-fact-age $(DEMO_FACT_AGE) $(REPORT_ARGS)"

bench: install
	@mkdir -p $(LOGS); set -e; ts=$$(date -u +%Y%m%dT%H%M%SZ); all=""; texts=""; i=0; \
	for m in $(or $(MODELS),_); do \
	  i=$$((i + 1)); \
	  name=$(LOGS)/lalm_benchmark_run_$$ts$$( [ "$$m" = _ ] || echo "_$${i}_$$m" | tr '/: ' '___'); \
	  $(BIN)/lalm-prompts --num-rounds $(ROUNDS) \
	  | $(BIN)/lalm-chat $(if $(BASE_URL),--base-url $(BASE_URL)) $$( [ "$$m" = _ ] || echo --model $$m ) \
	      --max-tokens $(MAX_TOKENS) --output $$name.jsonl $(CHAT_ARGS) \
	  | $(BIN)/lalm-metrics > $$name.metrics.jsonl \
	  || { rm -f $$name.metrics.jsonl; [ -s $$name.jsonl ] || rm -f $$name.jsonl; \
	       echo "make bench: the run stopped (see above); no server at the base URL? make server starts the project's own" >&2; \
	       exit 1; }; \
	  $(BIN)/lalm-report --format json $(REPORT_ARGS) $$name.metrics.jsonl > $$name.json; \
	  $(BIN)/lalm-report --plot $$name.png $(REPORT_ARGS) $$name.metrics.jsonl; \
	  $(BIN)/lalm-report --format html $(REPORT_ARGS) --texts $$name.jsonl $$name.metrics.jsonl > $$name.html; \
	  echo "recording $$name.jsonl, report $$name.json, plot $$name.png, page $$name.html" >&2; \
	  all="$$all $$name.metrics.jsonl"; texts="$$texts --texts $$name.jsonl"; \
	done; \
	if [ $(words $(MODELS)) -gt 1 ]; then \
	  cmp=$(LOGS)/lalm_benchmark_compare_$$ts; \
	  $(BIN)/lalm-report --plot $$cmp.png $(REPORT_ARGS) $$all | sed -n '/^Comparison/,$$p'; \
	  $(BIN)/lalm-report --format json $(REPORT_ARGS) $$all > $$cmp.json; \
	  $(BIN)/lalm-report --format html $(REPORT_ARGS) $$texts $$all > $$cmp.html; \
	  echo "comparison $$cmp.json, plot $$cmp.png, page $$cmp.html" >&2; \
	fi

depth: install
	@test -n "$(DEPTHS)" -o \( -n "$(HISTORY)" -a -n "$(AT)" \) || { echo "usage: make depth DEPTHS=1k,2k,4k,8k [MODEL=m BASE_URL=url CHAT_ARGS='--cold --probe-every 1 --repeat 3'] (over the reference conversation; or HISTORY=recording.jsonl AT=10,20,40)" >&2; exit 2; }
	@mkdir -p $(LOGS); set -e; \
	name=$(LOGS)/lalm_depth_run_$$(date -u +%Y%m%dT%H%M%SZ)$$(echo "$(if $(MODEL),_$(MODEL))" | tr '/: ' '___'); \
	$(BIN)/lalm-prompts \
	| $(BIN)/lalm-chat $(if $(BASE_URL),--base-url $(BASE_URL)) $(if $(MODEL),--model $(MODEL)) \
	    $(if $(DEPTHS),--depths $(DEPTHS) $(if $(HISTORY),--history $(HISTORY)),--history $(HISTORY) --at $(AT)) \
	    --max-tokens $(DEPTH_MAX_TOKENS) --stall-timeout $(DEPTH_STALL_TIMEOUT) --output $$name.jsonl $(CHAT_ARGS) \
	| $(BIN)/lalm-metrics > $$name.metrics.jsonl; \
	$(BIN)/lalm-report $(REPORT_ARGS) $$name.metrics.jsonl; \
	$(BIN)/lalm-report --depths --format markdown $(REPORT_ARGS) $$name.metrics.jsonl > $$name.depths.md; \
	echo "recording $$name.jsonl, metrics $$name.metrics.jsonl, depth table $$name.depths.md" >&2

# server configurations side by side at the same depths of the reference conversation:
# CONFIGS on the project's server (MODEL, or each of MODELS: models are an axis too), or
# ENDPOINTS="a=URL b=URL" a user started; one comparison at the end (text, JSON, Markdown, page)
CONFIGS    ?=
ENDPOINTS  ?=
SWEEP_NAME ?= sweep
sweep: server-bin
	@test -n "$(DEPTHS)" -a -n "$(CONFIGS)$(ENDPOINTS)$(MODELS)" || { echo "usage: make sweep DEPTHS=1k,2k CONFIGS=\"kv=f16 kv=q8_0\" [MODEL=m or MODELS=\"a b\"] [CHAT_ARGS='--probe-every 1 --repeat 3'] (or ENDPOINTS=\"a=http://127.0.0.1:8001/v1 b=http://127.0.0.1:8002/v1\")" >&2; exit 2; }
	@mkdir -p $(LOGS); ts=$$(date -u +%Y%m%dT%H%M%SZ); out=$(LOGS)/lalm_$(SWEEP_NAME)_$$ts; all=""; texts=""; failed=""; \
	measure='$(BIN)/lalm-prompts | $(BIN)/lalm-chat --depths $(DEPTHS) $(if $(HISTORY),--history $(HISTORY)) --max-tokens $(DEPTH_MAX_TOKENS) --stall-timeout $(DEPTH_STALL_TIMEOUT) -q $(CHAT_ARGS)'; \
	for point in $(if $(ENDPOINTS),$(ENDPOINTS),$(foreach m,$(or $(MODELS),$(MODEL),_),$(foreach c,$(or $(CONFIGS),default),$(m)/$(c)))); do \
	  label=$${point%%=http*}; label=$${label#_/}; label=$${label%/default}; \
	  name=$${out}_$$(echo "$$label" | tr '/:=, ' '_____'); \
	  case "$$point" in \
	    *=http*) url=$${point#*=}; \
	      sh -c "$$measure --base-url $$url --label '$$label' --output $$name.jsonl | $(BIN)/lalm-metrics > $$name.metrics.jsonl" ;; \
	    *) model=$${point%%/*}; config=$${point#*/}; \
	      args=$$( [ "$$config" = default ] || $(BIN)/python -m lalmpipe.configs args "$$config") && \
	      $(BIN)/python -m lalmpipe.localserver run $$( [ "$$model" = _ ] || echo --model $$model ) \
	        $(if $(CTX),--ctx $(CTX)) --server-args="$$args $(SERVER_ARGS)" -- \
	        sh -c "$$measure --label '$$label' --output $$name.jsonl | $(BIN)/lalm-metrics > $$name.metrics.jsonl" ;; \
	  esac \
	  && { all="$$all $$name.metrics.jsonl"; texts="$$texts --texts $$name.jsonl"; } \
	  || { failed="$$failed $$label"; rm -f $$name.metrics.jsonl; echo "make $(SWEEP_NAME): $$label failed (see above); going on" >&2; }; \
	done; \
	[ -n "$$all" ] || { echo "make $(SWEEP_NAME): every run failed" >&2; exit 1; }; \
	$(BIN)/lalm-report $(REPORT_ARGS) $$all | sed -n '/^Comparison/,$$p'; \
	$(BIN)/lalm-report --format json $(REPORT_ARGS) $$all > $$out.json; \
	$(BIN)/lalm-report --format markdown $(REPORT_ARGS) $$all > $$out.md; \
	$(BIN)/lalm-report --format html $(REPORT_ARGS) $$texts $$all > $$out.html; \
	echo "$(SWEEP_NAME) $$out.json, $$out.md, page $$out.html$${failed:+; failed:$$failed}" >&2

# models side by side on the project's server, one after another, at the same depths: a
# sweep whose only axis is the model
compare:
	@test -n "$(DEPTHS)" -a -n "$(MODELS)" || { echo "usage: make compare MODELS=\"qwen2.5-coder-0.5b smollm2-135m\" DEPTHS=1k,2k,4k [CHAT_ARGS='--probe-every 1']" >&2; exit 2; }
	@$(MAKE) --no-print-directory sweep SWEEP_NAME=compare CONFIGS= ENDPOINTS=

# the reference conversation, written again by the demo's model on the project's server
# (hours on 2 cores; resumable: the raw answers stay in $(LALM_CACHE)/reference.raw.jsonl)
reference: server-bin
	@$(BIN)/python -m lalmpipe.localserver run --server-args='--parallel 2' -- \
	  sh -c '$(BIN)/python -m lalmpipe.reference write --base-url "$$OPENAI_BASE_URL" --out $(LALM_CACHE)/reference.raw.jsonl'
	$(BIN)/python -m lalmpipe.reference assemble $(LALM_CACHE)/reference.raw.jsonl > prompts/lalm_reference.jsonl

report: install
	@test -n "$(RUN)" || { echo "usage: make report RUN=logs/lalm_benchmark_run_<timestamp>.jsonl" >&2; exit 2; }
	@$(BIN)/lalm-metrics $(RUN) | $(BIN)/lalm-report $(REPORT_ARGS)

perf: install
	$(BIN)/python tests/perf.py

# the page tests open lalm-report's HTML in headless Chromium, Debian's package; where it
# cannot be installed, one line says why and the browser tests are skipped
browser:
	@test -x /usr/bin/chromium || \
	if [ "$$(id -u)" != 0 ]; then echo "make browser: not root, so no chromium: the browser tests are skipped" >&2; \
	elif ! command -v apt-get > /dev/null; then echo "make browser: no apt-get (not Debian), so no chromium: the browser tests are skipped" >&2; \
	else { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
	  echo "make browser: apt-get could not install chromium: the browser tests are skipped" >&2; fi

# the static checks (make test runs them first): ruff's rules and mypy, as pyproject.toml sets them
lint: install
	$(BIN)/ruff check lalmpipe tests
	$(BIN)/mypy lalmpipe

# the tiers (markers in pyproject.toml): the fast one leaves out the real server, the browser,
# the wheel installs, the wall-clock checks and the make targets run end to end; make test
# runs everything, the independent tests in parallel, then the real-server and timing ones
# alone, so that no busy neighbour spoils the client's clock. Twice as many workers as cores:
# the tests wait on real-time schedules and child processes more than they compute
FAST = not real_server and not browser and not install and not timing and not make_target
JOBS ?= $(shell echo $$((2 * $$(getconf _NPROCESSORS_ONLN 2> /dev/null || echo 1))))

test-fast: install
	$(BIN)/python -m pytest -q -rs -n $(JOBS) --dist loadfile -m "$(FAST)"

test: server-bin browser lint
	$(BIN)/python -m pytest -q -rs -n $(JOBS) --dist loadfile -m "not real_server and not timing"
	$(BIN)/python -m pytest -q -rs -m "real_server or timing"

# every engine installed (once each, one at a time: each build or install takes both cores)
engines: server-bin
	$(BIN)/python -m lalmpipe.localserver install

# live checks against every engine, each started once and stopped (not part of make test)
test-engines: engines
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ENGINE_TESTS)

# refresh tests/fixtures/engines/ENGINE.jsonl: each engine's live run, kept (replayed by make test)
record-engines: engines
	LALM_RECORD=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(ENGINE_TESTS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
