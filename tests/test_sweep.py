"""Sweeps of server configurations: the shorthands, what a run records of how the server was
started, and a comparison that names what differs and says when the answers are broken."""
import json
import re

import pytest

from conftest import prompts_jsonl, run_main
from lalmpipe import chat, configs, metrics, report
from lalmpipe.errors import UsageError
from lalmpipe.localserver.process import CONFIG_VAR
from scripted import ForkedServer, _chunk, sse


@pytest.mark.parametrize("config, args", [
    ("kv=f16", ["-ctk", "f16", "-ctv", "f16"]),
    ("kv=q8_0", ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on"]),       # a quantised V cache needs flash attention
    ("k=q4_0", ["-ctk", "q4_0"]),
    ("kv=q4_0,fa=off", ["-ctk", "q4_0", "-ctv", "q4_0", "-fa", "off"]),
    ("ctx=16384,fa=on", ["-c", "16384", "-fa", "on"]),
    ("arg=--no-context-shift,arg=-b 256", ["--no-context-shift", "-b", "256"]),
])
def test_each_shorthand_gives_the_engines_arguments(config, args):
    assert configs.args(config) == args


@pytest.mark.parametrize("config, message", [
    ("kv=q9_0", "cache type 'q9_0' is not one of"), ("fa=maybe", "fa is on, off or auto"),
    ("ctx=big", "ctx is a number of tokens"), ("warp=9", "unknown 'warp'"), ("kv", "is not key=value"),
])
def test_a_configuration_it_cannot_read_is_refused_naming_it(config, message):
    with pytest.raises(UsageError, match=message):
        configs.args(config)


def test_a_comparison_names_the_settings_that_differ():
    a = configs.settings(["-ctk", "f16", "-ctv", "f16", "--no-context-shift"])
    b = configs.settings(["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on", "--no-context-shift"])
    assert a == {"cache-type-k": "f16", "cache-type-v": "f16", "no-context-shift": "on"}
    assert configs.differences([a, b]) == ["cache-type-k", "cache-type-v", "flash-attn"]


def answers(text):
    return lambda i, body: sse((0.01, _chunk({"content": text})), (0.02, _chunk({}, finish="stop")),
                               (0.03, "[DONE]"))


def test_a_run_on_the_projects_server_records_how_it_was_started(monkeypatch, api_key):
    with ForkedServer(answers("fine")) as srv:
        config = {"base_url": srv.base_url, "engine": "llama.cpp's llama-server", "model": "m",
                  "model_file": "m.gguf", "model_sha256": "ab" * 32, "ctx": 4096,
                  "extra_args": ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on"], "command": ["llama-server"]}
        monkeypatch.setenv(CONFIG_VAR, json.dumps(config))
        ran = run_main(chat.main, ["--base-url", srv.base_url, "-q", "--label", "q8"], prompts_jsonl(["a"]))
        monkeypatch.setenv(CONFIG_VAR, json.dumps({**config, "base_url": "http://127.0.0.1:1/v1"}))
        elsewhere = run_main(chat.main, ["--base-url", srv.base_url, "-q"], prompts_jsonl(["a"]))
    run = ran.records[0]
    assert (run["server"]["config"], run["label"]) == (config, "q8")
    assert elsewhere.records[0]["server"]["config"] is None        # another server's run knows nothing of it


def run_with(label, extra, text, n=6, kv_cache_mib=None):
    """A measured run made on the project's server with `extra` arguments, answering `text`."""
    with ForkedServer(answers(text)) as srv:
        import os
        os.environ[CONFIG_VAR] = json.dumps({"base_url": srv.base_url, "engine": "llama.cpp", "model": "m",
                                             "model_file": "m.gguf", "extra_args": extra,
                                             "kv_cache_mib": kv_cache_mib})
        try:
            ran = run_main(chat.main, ["--base-url", srv.base_url, "-q", "--label", label],
                           prompts_jsonl([f"q{i}" for i in range(n)]))
        finally:
            del os.environ[CONFIG_VAR]
    return run_main(metrics.main, [], ran.out).out


def test_the_comparison_says_what_differs_and_when_the_answers_are_broken(api_key, tmp_path):
    good = run_with("f16", ["-ctk", "f16", "-ctv", "f16"], "A limiter caps the peaks of the master bus.",
                    kv_cache_mib=96.0)
    salad = run_with("q4_0", ["-ctk", "q4_0", "-ctv", "q4_0", "-fa", "on"], "the the the the " * 20)
    text = run_main(report.main, [], good + salad).out
    assert "Settings     the runs differ in: cache-type-k, cache-type-v, flash-attn" in text
    doc = json.loads(run_main(report.main, ["--format", "json"], good + salad).out)
    table = {r[0]: r[1:] for r in doc["comparison"]}
    assert table["name"] == ["f16", "q4_0"]
    assert table["server settings"] == ["cache-type-k=f16 cache-type-v=f16",
                                        "cache-type-k=q4_0 cache-type-v=q4_0 flash-attn=on"]
    # what the server's log said its KV cache took, where it said
    assert table["KV cache MiB"] == ["96.0", "-"]
    assert "KV cache MiB" in text
    assert text.count("Health       the answers loop on themselves (repeated 3-grams 0.9") == 1
    salad_id = doc["runs"][1]["run"]["run_id"]
    good_part, salad_part = text.split(f"(run {salad_id})")
    assert "Health" not in good_part and "of 6): the model's text is broken" in salad_part


def forgets_after(n_messages):
    """A scripted model answering the planted facts right while a request holds fewer messages."""
    from scripted import FACTS

    def answer(i, body):
        messages = body["messages"]
        fact = next((f for f in FACTS["facts"] if f["question"] == messages[-1]["content"]), None)
        text = (fact["answer"] if len(messages) < n_messages else "Not sure, 60?") if fact else "An answer."
        return sse((0.01, _chunk({"content": text})), (0.02, _chunk({}, finish="stop")), (0.03, "[DONE]"))
    return answer


@pytest.mark.make_target
def test_make_sweep_over_two_servers_reports_each_and_judges_the_difference(tmp_path, api_key):
    import subprocess

    from conftest import ROOT
    from scripted import FACTS
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(FACTS))
    example = f"{ROOT}/docs/examples/smollm2.jsonl"
    with ForkedServer(forgets_after(6)) as early, ForkedServer(forgets_after(1000)) as never:
        done = subprocess.run(
            ["make", "-s", "-o", "install", "-o", "server-bin", "sweep", f"BIN={ROOT}/bin", f"LOGS={tmp_path}",
             f"ENDPOINTS=early={early.base_url} never={never.base_url}", f"HISTORY={example}",
             "DEPTHS=300,500,700,900,1100", f"CHAT_ARGS=--probe-every 1 --facts {facts}",
             "REPORT_ARGS=--min-fact-age 0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [out] = tmp_path.glob("lalm_sweep_*Z.json")
    stem = str(out)[:-len(".json")]
    assert f"sweep {stem}.json, {stem}.md, page {stem}.html" in done.stderr
    doc = json.loads(out.read_text())
    assert [r["run"]["label"] for r in doc["runs"]] == ["early", "never"]
    [overall] = [v for v in doc["verdicts"] if v["figure"] == "recall" and v["where"] == "overall"]
    assert overall["values"][0] < overall["values"][1] == 1.0 and overall["n"] == [10, 10]
    assert overall["verdict"].startswith("differs (p = ")
    # each run named in the line by its label, with its own value
    assert re.search(r"^recall overall: early \d+% vs never 100%: differs \(p = ", done.stdout, re.M), done.stdout


@pytest.mark.make_target
def test_a_configuration_that_fails_is_reported_and_the_sweep_goes_on(tmp_path, api_key):
    import subprocess

    from conftest import ROOT
    example = f"{ROOT}/docs/examples/smollm2.jsonl"
    with ForkedServer(forgets_after(1000)) as up:
        done = subprocess.run(
            ["make", "-s", "-o", "install", "-o", "server-bin", "sweep", f"BIN={ROOT}/bin", f"LOGS={tmp_path}",
             f"ENDPOINTS=gone=http://127.0.0.1:9/v1 up={up.base_url}", f"HISTORY={example}", "DEPTHS=300,500"],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "make sweep: gone failed (see above); going on" in done.stderr
    assert "; failed: gone" in done.stderr
    [out] = tmp_path.glob("lalm_sweep_*Z.json")
    assert json.loads(out.read_text())["run"]["label"] == "up"          # one run left: its own report


@pytest.mark.real_server
@pytest.mark.make_target
def test_make_sweep_of_two_real_kv_cache_types_as_the_readme_writes_it(tmp_path):
    # the README's command, on the project's own llama-server and SmolLM2: each configuration
    # started, measured at each depth of the reference conversation with probes, and stopped
    import subprocess

    from conftest import ROOT
    done = subprocess.run(
        ["make", "-s", "-o", "install", "-o", "server-bin", "sweep", f"LOGS={tmp_path}", "MODEL=smollm2-135m",
         "CONFIGS=kv=f16 kv=q8_0", "SERVER_ARGS=-lv 4", "DEPTHS=1k,2k", "CHAT_ARGS=--probe-every 1"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    [out] = tmp_path.glob("lalm_sweep_*Z.json")
    doc = json.loads(out.read_text())
    runs = doc["runs"]
    assert [r["run"]["label"] for r in runs] == ["smollm2-135m/kv=f16", "smollm2-135m/kv=q8_0"]
    assert [r["run"]["server"]["config"]["extra_args"][:4] for r in runs] == [
        ["-ctk", "f16", "-ctv", "f16"], ["-ctk", "q8_0", "-ctv", "q8_0"]]
    assert runs[1]["run"]["server"]["config"]["extra_args"][4:] == ["-fa", "on", "-lv", "4"]
    # at verbosity 4 the server's log says what its KV cache took: q8_0 about half of f16 (8.5 bits a value)
    f16, q8 = (r["run"]["server"]["config"]["kv_cache_mib"] for r in runs)
    assert 1.7 < f16 / q8 < 2.0
    assert "the runs differ in: cache-type-k, cache-type-v, flash-attn" in done.stdout
    for r in runs:
        depths = [t for t in r["turns"] if t["status"] == "ok"]
        assert len(depths) == 2
        # each depth's request reached its target (the client's count), and the server counted it
        assert [t["context_tokens_est"] >= d for t, d in zip(depths, (1024, 2048))] == [True, True]
        assert all(t["prompt_tokens_source"] == "server" and t["decode_tps"] > 0 for t in depths)
        # the planted facts asked after each depth, scored by how far back they were stated
        assert r["memory"]["probes"] == sum(band["n"] for band in r["memory"]["by_distance"]) > 0
    assert {v["figure"] for v in doc["verdicts"]} >= {"recall", "ttft_s", "decode_tps"}
    for ext in (".md", ".html"):
        assert out.with_suffix(ext).stat().st_size > 1000


def probe_answers(text):
    """Every answer a sound sentence; a question about a planted fact answered with `text`."""
    from scripted import FACTS
    questions = {f["question"] for f in FACTS["facts"]}

    def answer(i, body):
        said = text if body["messages"][-1]["content"] in questions else "A limiter caps the peaks of the bus."
        return sse((0.01, _chunk({"content": said})), (0.02, _chunk({}, finish="stop")), (0.03, "[DONE]"))
    return answer


@pytest.mark.parametrize("said, health", [
    ("# Tempo", "Health       most answers to the probes give no number at all (11 of 11, though each asks for one)"),
    ("Not sure, 60?", None),            # forgetting names a wrong number: memory, not broken text
])
def test_answers_to_the_probes_that_give_no_number_are_named_in_the_health_line(api_key, tmp_path, said, health):
    from scripted import FACTS
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(FACTS))
    with ForkedServer(probe_answers(said)) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "-q", "--probe-every", "1", "--facts", str(facts)],
                       prompts_jsonl([f"q{i}" for i in range(6)]))
    out = run_main(metrics.main, [], ran.out).out
    text = run_main(report.main, [], out).out
    doc = json.loads(run_main(report.main, ["--format", "json"], out).out)
    assert (doc["memory"]["probes_answered"], doc["memory"]["probes_without_number"]) == (
        11, 11 if health else 0)
    assert doc["memory"]["repeat_3gram_ratio_mean"] < 0.35          # no loop: the 3-grams say nothing
    if health:
        assert health in text and "of 11 probe answers give no number" in text
    else:
        assert "Health" not in text
