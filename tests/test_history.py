"""A fixed history from a recording (--history), chosen turns (--at, --every),
full prefills (--cold) and probes at depth, against scripted servers whose
requests are the truth."""
import json
import statistics

import pytest

from browser import parse
from conftest import prompts_jsonl, run_main
from lalmpipe import aggregate, chat, metrics, report, tokens
from lalmpipe.history import digest
from lalmpipe.records import Metrics, Recall
from lalmpipe.render.sentences import history_sentence
from lalmpipe.render.tables import DEPTH_COLUMNS, depth_comparison, depth_rows, depth_title
from lalmpipe.results import load
from lalmpipe.replay import Script
from lalmpipe.vocab import CountSource
from scripted import FACTS, ForkedServer, scripted_model, sse, stream

PROMPTS = [f"Question number {i} about the mix?" for i in range(1, 11)]
LLAMA_CPP = {"/props": {"default_generation_settings": {"n_ctx": 8192}}}


def answer(text):
    return sse((0.01, json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})),
               (0.02, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
               (0.03, "[DONE]"))


def model(name):
    """A scripted model whose answers name it and the request they answer."""
    return lambda i, body: answer(f"{name} answers request {i + 1}" + " at length" * (i % 3))


def chat_with(srv, *args, prompts=PROMPTS):
    ran = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q", *args],
                   prompts_jsonl(prompts))
    return ran, srv.requests


@pytest.fixture
def recording(tmp_path, api_key):
    """A run of model A over the ten prompts: the history the others are sent."""
    path = tmp_path / "a.jsonl"
    with ForkedServer(model("A")) as srv:
        ran, _ = chat_with(srv, "--output", str(path))
    assert ran.code == 0, ran.err
    return path, [t["content"] for t in ran.records if t["kind"] == "turn"]


def assistants(request):
    return [m["content"] for m in request["body"]["messages"] if m["role"] == "assistant"]


def test_two_models_over_one_history_are_sent_the_same_requests(recording):
    path, recorded = recording
    seen = {}
    for name in "BC":
        with ForkedServer(model(name)) as srv:
            ran, requests = chat_with(srv, "--history", str(path))
        assert ran.code == 0, ran.err
        seen[name] = ran, requests
    (b, b_requests), (c, c_requests) = seen["B"], seen["C"]
    assert len(b_requests) == len(c_requests) == 10
    for k, (rb, rc) in enumerate(zip(b_requests, c_requests)):
        assert json.dumps(rb["body"]) == json.dumps(rc["body"])          # the same bytes
        assert assistants(rb) == recorded[:k]                         # the recorded answers, in order
    turns = [t for t in b.records if t["kind"] == "turn"]
    assert [t["content"] for t in turns] == [f"B answers request {i}" + " at length" * ((i - 1) % 3)
                                             for i in range(1, 11)]    # its own answers recorded...
    assert [t["history"] for t in turns] == recorded                  # ...and the history's sent on
    source = b.records[0]["settings"]["history"]
    a_run = json.loads(path.read_text().splitlines()[0])
    answers = {i: (PROMPTS[i - 1], recorded[i - 1]) for i in range(1, 11)}
    assert source == {"path": str(path), "run_id": a_run["run_id"], "model": "scripted",
                      "sha256": digest(answers), "answers": 10}
    assert c.records[0]["settings"]["history"] == source


def sent_tokens(request, answer_text):
    """The client's count of what a request carried, and the answer it added."""
    return sum(tokens.count(m["content"]) for m in request["body"]["messages"]) + tokens.count(answer_text)


def measured(ran):
    out = run_main(metrics.main, [], ran.out)
    assert out.code == 0, out.err
    return [r for r in out.records if r["kind"] == "metrics"], out


@pytest.mark.parametrize("choice", [["--at", "5,10"], ["--every", "5"], ["--at", "5-5", "--every", "10"]])
def test_chosen_turns_send_two_requests_over_the_recorded_history(recording, choice):
    path, recorded = recording
    with ForkedServer(model("B")) as srv:
        ran, requests = chat_with(srv, "--history", str(path), *choice)
    assert ran.code == 0, ran.err
    assert [len(r["body"]["messages"]) for r in requests] == [9, 19]
    assert [assistants(r) for r in requests] == [recorded[:4], recorded[:9]]
    assert [m["content"] for m in requests[1]["body"]["messages"] if m["role"] == "user"] == PROMPTS
    turns = [t for t in ran.records if t["kind"] == "turn"]
    assert [(t["turn"], t["prompt"]["id"]) for t in turns] == [(5, 5), (10, 10)]
    assert [[(s["turn"], s["prompt"]["id"], s["answer"]) for s in t["skipped"]] for t in turns] == [
        [(i, i, recorded[i - 1]) for i in range(1, 5)], [(i, i, recorded[i - 1]) for i in range(6, 10)]]
    rows, _ = measured(ran)
    # the client's count follows what was sent: the recorded answers, the skipped prompts included
    assert [r["conversation_tokens"] for r in rows] == [
        sent_tokens(requests[0], recorded[4]), sent_tokens(requests[1], recorded[9])]


def test_a_recording_made_over_a_history_is_a_history_of_the_same_answers(recording, tmp_path):
    path, recorded = recording
    again = tmp_path / "b.jsonl"
    with ForkedServer(model("B")) as srv:
        assert chat_with(srv, "--history", str(path), "--at", "3,10", "--output", str(again))[0].code == 0
    with ForkedServer(model("C")) as srv:
        ran, requests = chat_with(srv, "--history", str(again), "--at", "7")
    assert ran.code == 0, ran.err
    assert assistants(requests[0]) == recorded[:6]
    first = json.loads(path.read_text().splitlines()[0])["run_id"]
    assert ran.records[0]["settings"]["history"]["sha256"] == digest(
        {i: (PROMPTS[i - 1], recorded[i - 1]) for i in range(1, 11)})
    assert ran.records[0]["settings"]["history"]["run_id"] != first     # the recording it was read from


@pytest.mark.parametrize("routes, way", [(LLAMA_CPP, "cache_prompt"), ({}, "marker")])
def test_cold_makes_every_request_a_full_prefill(recording, routes, way):
    path, recorded = recording
    with ForkedServer(model("B"), routes=routes) as srv:
        ran, requests = chat_with(srv, "--history", str(path), "--at", "2,4", "--cold")
    assert ran.code == 0, ran.err
    run, turns = ran.records[0], [t for t in ran.records if t["kind"] == "turn"]
    assert run["settings"]["cold"] is True
    assert [t["cold"] for t in turns] == [way, way]
    for r, t in zip(requests, turns):
        first = r["body"]["messages"][0]["content"]
        if way == "cache_prompt":
            assert r["body"]["cache_prompt"] is False and t["marker"] is None
            assert first == PROMPTS[0]
        else:
            assert "cache_prompt" not in r["body"]
            assert t["marker"] == f"[{run['run_id']}/{t['turn']}]\n"
            assert first == t["marker"] + PROMPTS[0]           # at the very start, and only there
            assert assistants(r) == recorded[:t["turn"] - 1]
    rows, _ = measured(ran)
    assert [r["conversation_tokens"] for r in rows] == [
        sent_tokens(requests[0], recorded[1]), sent_tokens(requests[1], recorded[3])]


def test_warm_requests_carry_neither(recording):
    path, _ = recording
    with ForkedServer(model("B"), routes=LLAMA_CPP) as srv:
        ran, requests = chat_with(srv, "--history", str(path), "--at", "2,4")
    assert ran.code == 0
    assert all("cache_prompt" not in r["body"] for r in requests)
    assert all(t["cold"] is None and t["marker"] is None for t in ran.records if t["kind"] == "turn")


@pytest.mark.parametrize("flags", [["--at", "5,10"], ["--every", "5"]])
def test_chosen_turns_without_a_history_are_refused_before_any_input(flags, api_key):
    ran = run_main(chat.main, ["--base-url", "http://127.0.0.1:9/v1", *flags], "not json at all\n")
    assert ran.code == 2 and ran.out == ""
    assert ran.err == ("lalm-chat: error: --at and --every need --history RECORDING: the answers "
                       "of the turns not sent would not exist\n")


def test_a_history_without_an_answer_or_with_another_prompt_is_refused(recording, tmp_path):
    path, _ = recording
    lines = path.read_text().splitlines()
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:8]) + "\n")                   # the run and turns 1-7
    changed = list(PROMPTS)
    changed[5] = "Question number 6, said another way?"
    with ForkedServer(model("B")) as srv:
        lacks, _ = chat_with(srv, "--history", str(short), "--at", "9")
        differs, _ = chat_with(srv, "--history", str(path), "--at", "9", prompts=changed)
        absent, _ = chat_with(srv, "--history", str(path), "--at", "3,12")
        assert srv.requests == []                                    # refused before any request
    assert lacks.code == differs.code == absent.code == 2
    assert lacks.err == (f"lalm-chat: error: --history {short}: no answer to prompt 8 "
                         "(the recording answered 7 prompts)\n")
    assert differs.err == (f"lalm-chat: error: --history {path}: prompt 6 differs from the one "
                           "the recording answered\n")
    assert absent.err == "lalm-chat: error: --at: prompt 12 is not among the prompts read\n"


def test_probes_at_depth_ask_every_fact_stated_so_far_against_the_fixed_history(recording, tmp_path):
    path, recorded = recording
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(FACTS))
    with ForkedServer(model("B")) as srv:
        ran, requests = chat_with(srv, "--history", str(path), "--at", "3,6", "--probe-every", "1",
                                  "--facts", str(facts))
    assert ran.code == 0, ran.err
    kinds = [(r["kind"], r.get("turn") or r.get("after_turn")) for r in ran.records[1:]]
    # tempo (stated in 1) and bins (stated in 2) after each turn; "later" (9) never
    assert kinds == [("turn", 3), ("probe", 3), ("probe", 3), ("turn", 6), ("probe", 6), ("probe", 6)]
    assert len(requests) == 6
    questions = [f["question"] for f in FACTS["facts"][:2]]
    for probe, after in ((requests[1], 3), (requests[2], 3), (requests[4], 6), (requests[5], 6)):
        assert assistants(probe) == recorded[:after]                 # the fixed history
        assert probe["body"]["messages"][-1]["content"] in questions
    users = [m["content"] for m in requests[3]["body"]["messages"] if m["role"] == "user"]
    assert not set(users) & set(questions)                           # no probe entered the history
    assert assistants(requests[3]) == recorded[:5]
    rows, out = measured(ran)
    recalls = [r for r in out.records if r["kind"] == "recall"]
    assert [(r["fact_id"], r["stated_turn"], r["turns_since_stated"]) for r in recalls] == [
        ("tempo", 1, 2), ("bins", 2, 1), ("tempo", 1, 5), ("bins", 2, 4)]
    # where a fact lies follows the recorded answers, those of the turns not sent too
    exchange = [tokens.count(p) + tokens.count(a) for p, a in zip(PROMPTS, recorded)]
    rule = tokens.count(FACTS["rule"]["text"])
    assert [r["tokens_since_stated"] for r in recalls] == [
        sum(exchange[:3]), sum(exchange[1:3]), sum(exchange[:6]), sum(exchange[1:6])]
    assert recalls[3]["depth"] == round((rule + exchange[0]) / (rule + sum(exchange[:6])), 4)


def test_every_k_th_turn_sent_is_probed(recording, tmp_path):
    path, _ = recording
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(FACTS))
    with ForkedServer(model("B")) as srv:
        ran, _ = chat_with(srv, "--history", str(path), "--at", "2,4,6,8", "--probe-every", "2",
                           "--facts", str(facts))
    assert sorted({r["after_turn"] for r in ran.records if r["kind"] == "probe"}) == [4, 8]


def test_a_turn_that_stops_the_run_is_sent_again_on_resume_over_the_same_history(recording, tmp_path):
    path, recorded = recording
    out = tmp_path / "depth.jsonl"
    scripts = {1: Script(status=500, body=b'{"error":"boom"}', headers={"Content-Type": "application/json"})}
    with ForkedServer(lambda i, body: scripts.get(i) or model("B")(i, body)) as srv:
        first, _ = chat_with(srv, "--history", str(path), "--at", "5,10", "--retries", "0",
                             "--output", str(out))
        resumed, requests = chat_with(srv, "--history", str(path), "--at", "5,10", "--output", str(out),
                                      "--resume")
    assert first.code == resumed.code == 0, resumed.err
    assert json.dumps(requests[2]["body"]) == json.dumps(requests[1]["body"])   # the same request again
    assert assistants(requests[2]) == recorded[:9]
    turns = [t for t in resumed.records if t["kind"] == "turn"]
    assert [(t["turn"], t["prompt"]["id"], t["status"], len(t["skipped"])) for t in turns] == [
        (5, 5, "ok", 4), (10, 10, "error", 4), (11, 10, "ok", 0)]
    assert turns[1]["history"] is None and turns[2]["history"] == recorded[9]
    rows, _ = measured(resumed)
    assert rows[2]["conversation_tokens"] == sent_tokens(requests[2], recorded[9])


def test_the_comparison_says_whether_runs_shared_a_history(recording, tmp_path):
    path, _ = recording
    outs = []
    for name, args in (("B", ["--history", str(path)]), ("C", ["--history", str(path)]), ("D", []),
                       ("E", ["--history", str(path), "--system", "Be brief."])):
        with ForkedServer(model(name)) as srv:
            ran, _ = chat_with(srv, *args, prompts=PROMPTS[:3])
        outs.append(measured(ran)[1].out)
    runs = [json.loads(o.splitlines()[0]) for o in outs]
    source = runs[0]["settings"]["history"]
    shared = run_main(report.main, [], outs[0] + outs[1]).out
    assert (f"History      shared: both runs were sent the answers of run {source['run_id']} (scripted, "
            f"sha256 {source['sha256'][:12]}), the same messages at every turn they measured\n") in shared
    assert shared.count(f"history             {source['sha256'][:12]} (run {source['run_id']})") == 1
    mixed = run_main(report.main, ["--format", "markdown"], outs[0] + outs[2]).out
    assert (f"History not shared: run {runs[0]['run_id']} over the answers of run {source['run_id']} "
            f"(sha256 {source['sha256'][:12]}); run {runs[2]['run_id']} over its own answers.") in mixed
    assert "| history | " in mixed and " own answers |" in mixed
    framed = run_main(report.main, [], outs[0] + outs[3]).out
    assert "History      shared: both runs were sent the answers of run" in framed
    assert ("but not the same messages: their system message or standing rule "
            "(--probe-every) differ\n") in framed


def test_resume_refuses_another_history_or_one_the_run_did_not_have(recording, tmp_path):
    path, _ = recording
    other = tmp_path / "other.jsonl"
    with ForkedServer(model("Z")) as srv:
        assert chat_with(srv, "--output", str(other))[0].code == 0
    fixed, own = tmp_path / "fixed.jsonl", tmp_path / "own.jsonl"
    stop = Script(status=400, body=b'{"error":{"message":"bad request"}}', headers={"Content-Type": "application/json"})
    with ForkedServer(lambda i, body: stop if i == 1 else model("B")(i, body)) as srv:
        assert chat_with(srv, "--history", str(path), "--at", "5,10", "--output", str(fixed))[0].code == 0
        assert chat_with(srv, "--output", str(own), "--num-rounds", "3")[0].code == 0
        n = len(srv.requests)
        swapped, _ = chat_with(srv, "--history", str(other), "--at", "5,10", "--output", str(fixed), "--resume")
        added, _ = chat_with(srv, "--history", str(path), "--output", str(own), "--resume")
        assert len(srv.requests) == n                                # refused before any request
    used = json.loads(fixed.read_text().splitlines()[0])["settings"]["history"]["sha256"]
    assert swapped.code == added.code == 2
    assert swapped.err.startswith(f"lalm-chat: error: --resume: {other} is not the history the run used "
                                  "(sha256 ") and swapped.err.endswith(f", not {used[:12]})\n")
    assert added.err == "lalm-chat: error: --resume: the run was made without --history; resume it without\n"


def cell(value, spec):
    return "-" if value is None else format(value, spec)


def depth_run(path, facts, *args):
    """A run over the recorded history at turns 3 and 6, probed after each, on a
    llama.cpp-like scripted model whose prompts count 100 tokens a message and which
    forgets at 1,000: its lalm-metrics output and its metrics records."""
    with ForkedServer(scripted_model, routes=LLAMA_CPP) as srv:
        ran, _ = chat_with(srv, "--history", str(path), "--at", "3,6", "--probe-every", "1",
                           "--facts", str(facts), *args)
    assert ran.code == 0, ran.err
    rows, out = measured(ran)
    return out.out, rows


@pytest.fixture
def facts(tmp_path):
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(FACTS))
    return path


def test_the_depth_table_has_a_row_per_measured_turn_with_the_recall_asked_after_it(recording, facts):
    out, rows = depth_run(recording[0], facts)
    # turn 3: 3 prompts and 2 answers (500 tokens), the probes right (700 < 1,000);
    # turn 6: 11 messages, the probes wrong (1,300)
    assert [(r["turn"], r["prompt_tokens"], r["context_tokens"]) for r in rows] == [(3, 500, 505), (6, 1100, 1105)]
    text = run_main(report.main, [], out).out
    tps = [cell(r[k], ".1f") for r in rows for k in ("prefill_tps", "decode_tps")]
    assert ("Depths (warm: the server's prefix cache served the share cached; recall: facts recalled "
            "of those asked after the turn)") in text
    table = text.split("after the turn)\n\n")[1].split("\n\n")[0].splitlines()
    assert [line.split() for line in table] == [
        ["target", "depth", "cl100k", "turn", "TTFT", "s", "prefill", "tok/s", "cached", "decode", "tok/s", "reason",
         "tok", "recall"],
        ["-", "505", str(rows[0]["context_tokens_est"]), "3", format(rows[0]["ttft_s"], ".3f"), tps[0], "-", tps[1],
         "0", "2/2"],
        ["-", "1105", str(rows[1]["context_tokens_est"]), "6", format(rows[1]["ttft_s"], ".3f"), tps[2], "-", tps[3],
         "0", "0/2"]]
    assert "turn          tier  status" not in text               # the depth table stands for the turns
    md = run_main(report.main, ["--format", "markdown"], out).out
    assert "## Depths" in md and (f"| - | 505 | {rows[0]['context_tokens_est']} | 3 | "
                                  f"{format(rows[0]['ttft_s'], '.3f')} | {tps[0]} | - |") in md
    doc = json.loads(run_main(report.main, ["--format", "json"], out).out)
    assert [(d["turn"], d["context_tokens"], d["probes"], d["recalled"]) for d in doc["depths"]] == [
        (3, 505, 2, 2), (6, 1105, 2, 0)]
    # the page has it too, above the turns
    page = parse(run_main(report.main, ["--format", "html"], out).out)
    depths = page.find("table", "depths")
    assert [[c.text() for c in tr.find_all("th") + tr.find_all("td")] for tr in depths.find_all("tr")] == [
        [line for line in row] for row in depth_rows(load(doc))]
    assert [c.text() for c in depths.find_all("tr")[1].find_all("td")][:4] == [
        "-", "505", str(rows[0]["context_tokens_est"]), "3"]
    assert page.find("p", "depths-title").text() == depth_title(load(doc)) + "."


def _share(row):
    """The depth table's cached cell of a metrics row: the share of its prompt from the cache."""
    return "-" if row["cached_tokens"] is None else f"{row['cached_tokens'] / row['prompt_tokens']:.0%}"


def test_runs_over_one_history_are_compared_depth_by_depth(recording, facts):
    (cold, cold_rows), (warm, warm_rows) = depth_run(recording[0], facts, "--cold"), depth_run(recording[0], facts)
    runs = [json.loads(o.splitlines()[0])["run_id"] for o in (cold, warm)]
    text = run_main(report.main, ["--depths"], cold + warm).out
    lines = text.splitlines()
    assert lines[0].startswith("Depths; history shared: both runs were sent the answers of run ")
    assert lines[2].split() == ["prompt", "target", "depth", "(cl100k)"] + [
        w for i in ("[1]", "[2]") for w in ("TTFT", "s", i, "prefill", "tok/s", i, "cached", i,
                                            "decode", "tok/s", i, "reason", "tok", i, "recall", i)]
    for line, c, w, recall in zip(lines[3:5], cold_rows, warm_rows, ("2/2", "0/2")):
        assert c["context_tokens_est"] == w["context_tokens_est"]          # the same messages (cache_prompt)
        assert line.split() == [str(c["prompt_id"]), "-", str(c["context_tokens_est"])] + [
            x for r in (c, w) for x in (cell(r["ttft_s"], ".3f"), cell(r["prefill_tps"], ".1f"),
                                        _share(r), cell(r["decode_tps"], ".1f"), str(r["reasoning_tokens"]),
                                        recall)]
    assert lines[6:] == [f"[1] run {runs[0]}: scripted, cold", f"[2] run {runs[1]}: scripted, warm"]
    csv_rows = run_main(report.main, ["--depths", "--format", "csv"], cold + warm).out.splitlines()
    assert csv_rows[0] == ("run_id,model,prefill,turn,prompt_id,context_tokens,context_tokens_source,"
                           "context_tokens_est,ttft_s,prefill_tps,cached_share,decode_tps,reasoning_tokens,"
                           "probes,recalled,recall_ci95,ttft_sd,prefill_tps_sd,decode_tps_sd,repeats,target_tokens")
    assert [row.split(",")[:8] for row in csv_rows[1:]] == [
        [run, "scripted", kind, str(r["turn"]), str(r["turn"]), str(r["context_tokens"]), "server",
         str(r["context_tokens_est"])]
        for run, kind, rs in ((runs[0], "cold", cold_rows), (runs[1], "warm", warm_rows)) for r in rs]
    # the page puts them side by side too, with the legend and the history sentence
    doc = json.loads(run_main(report.main, ["--format", "json"], cold + warm).out)
    page = parse(run_main(report.main, ["--format", "html"], cold + warm).out)
    table, legend = depth_comparison(load(doc).runs)
    shown = page.find("table", "depths-compared")
    assert [[c.text() for c in tr.find_all("th") + tr.find_all("td")] for tr in shown.find_all("tr")] == table
    assert [li.text() for li in page.find("ul", "legend").find_all("li")] == legend
    assert page.find("p", "history").text() == f"History {history_sentence(load(doc).runs)}."
    assert len(page.find_all("table", "depths")) == 2           # and each run's own
    assert [sec.find("h2").text().split("run ")[-1] for sec in page.find_all("section", "run")] == [
        f"{runs[0]}, cold", f"{runs[1]}, warm"]                  # each run says how it was prefilled
    md = run_main(report.main, ["--depths", "--format", "markdown"], cold + warm).out
    assert md.count("\n| 3 | ") == md.count("\n| 6 | ") == 1 and f"- [2] run {runs[1]}: scripted, warm" in md
    refused = run_main(report.main, ["--depths", "--format", "json"], cold)
    assert refused.code == 2 and refused.err.endswith("--depths goes with --format text, markdown or csv\n")


@pytest.mark.make_target
def test_make_depth_runs_the_chosen_turns_and_keeps_the_depth_table(tmp_path):
    import subprocess
    from conftest import ROOT
    from test_replay import start_replay, stop
    example = f"{ROOT}/docs/examples/smollm2.jsonl"
    proc, url = start_replay(example, "--speed", "0")
    try:
        done = subprocess.run(["make", "-s", "-o", "install", "depth", f"BIN={ROOT}/bin", f"BASE_URL={url}",
                               f"HISTORY={example}", "AT=2,8", "DEPTH_MAX_TOKENS=96", f"LOGS={tmp_path}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        stop(proc)
    assert done.returncode == 0, done.stderr
    [table] = tmp_path.glob("lalm_depth_run_*.depths.md")
    [rows] = tmp_path.glob("lalm_depth_run_*.metrics.jsonl")
    metrics_rows = [r for r in map(json.loads, rows.read_text().splitlines()) if r["kind"] == "metrics"]
    assert [r["turn"] for r in metrics_rows] == [2, 8]
    # a deep request may take many minutes before its first token: not a stall
    [recording_file] = [p for p in tmp_path.glob("lalm_depth_run_*.jsonl") if ".metrics." not in p.name]
    assert json.loads(recording_file.read_text().splitlines()[0])["settings"]["stall_timeout"] == 1800
    assert [line.split(" | ")[:4] for line in table.read_text().splitlines()[4:]] == [
        ["| -", str(r["context_tokens"]), str(r["context_tokens_est"]), str(r["turn"])] for r in metrics_rows]
    assert "Depths (warm: " in done.stdout and f"depth table {table}" in done.stderr
    usage = subprocess.run(["make", "-s", "-o", "install", "depth", f"BIN={ROOT}/bin"], cwd=ROOT,
                           capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: make depth DEPTHS=1k,2k,4k,8k ")
    assert "or HISTORY=recording.jsonl AT=10,20,40" in usage.stderr


def test_depths_a_server_did_not_count_are_the_clients_marked_as_estimates(recording):
    with ForkedServer(model("B")) as srv:                   # no usage
        ran, _ = chat_with(srv, "--history", str(recording[0]), "--at", "3,6")
    rows, out = measured(ran)
    text = run_main(report.main, [], out.out).out
    assert "depth in client estimates" in text.splitlines()[2]
    table = text.split("after the turn)\n\n")[1].split("\n\n")[0].splitlines()[1:]
    assert [line.split()[:5] for line in table] == [
        ["-", "≈", str(r["context_tokens_est"]), str(r["context_tokens_est"]), str(r["turn"])] for r in rows]
    # the page marks them as the text does: in its depth table and its turn rows
    page = parse(run_main(report.main, ["--format", "html"], out.out).out)
    depths = [[c.text() for c in tr.find_all("td")] for tr in page.find("table", "depths").find_all("tr")[1:]]
    assert [row[:4] for row in depths] == [
        ["-", f"≈ {r['context_tokens_est']}", str(r["context_tokens_est"]), str(r["turn"])] for r in rows]
    turns = [[c.text() for c in d.find("summary").find_all("span")] for d in page.find_all("details", "turn")]
    assert [row[2] for row in turns] == [f"≈ {r['context_tokens_est']}" for r in rows]


# ---- repeats at depth (--repeat) ----

def test_repeat_sends_each_chosen_turn_n_times_and_the_history_takes_it_once(recording):
    path, recorded = recording
    with ForkedServer(model("B")) as srv:
        ran, requests = chat_with(srv, "--history", str(path), "--at", "3,6", "--repeat", "3")
    assert ran.code == 0, ran.err
    assert ran.records[0]["settings"]["repeat"] == 3
    bodies = [json.dumps(r["body"]) for r in requests]
    assert len(bodies) == 6 and bodies[0] == bodies[1] == bodies[2] and bodies[3] == bodies[4] == bodies[5]
    # after the repeats the conversation goes on as if prompt 3 had been sent once
    assert assistants(requests[3]) == recorded[:5]
    assert [m["content"] for m in requests[3]["body"]["messages"] if m["role"] == "user"] == PROMPTS[:6]
    turns = [t for t in ran.records if t["kind"] == "turn"]
    assert [(t["turn"], t["prompt"]["id"], t["repeat"], t["history"], [s["turn"] for s in t["skipped"]])
            for t in turns] == [(3, 3, 1, None, [1, 2]), (4, 3, 2, None, []), (5, 3, 3, recorded[2], []),
                                (8, 6, 1, None, [6, 7]), (9, 6, 2, None, []), (10, 6, 3, recorded[5], [])]
    assert [t["content"] for t in turns] == [f"B answers request {i}" + " at length" * ((i - 1) % 3)
                                             for i in range(1, 7)]       # each sending's own answer
    rows, _ = measured(ran)
    assert [(r["turn"], r["prompt_id"], r["repeat"]) for r in rows] == [
        (3, 3, 1), (4, 3, 2), (5, 3, 3), (8, 6, 1), (9, 6, 2), (10, 6, 3)]
    # the client's count of each request follows what was sent: the history entered once
    assert [r["context_tokens_est"] for r in rows] == [sent_tokens(q, t["content"]) for q, t in zip(requests, turns)]


@pytest.mark.parametrize("routes, way", [(LLAMA_CPP, "cache_prompt"), ({}, "marker")])
def test_cold_repeats_are_each_a_full_prefill(recording, routes, way):
    path, _ = recording
    with ForkedServer(model("B"), routes=routes) as srv:
        ran, requests = chat_with(srv, "--history", str(path), "--at", "4", "--repeat", "3", "--cold")
    assert ran.code == 0, ran.err
    run, turns = ran.records[0], [t for t in ran.records if t["kind"] == "turn"]
    assert [(t["turn"], t["repeat"], t["cold"]) for t in turns] == [(4, 1, way), (5, 2, way), (6, 3, way)]
    firsts = [r["body"]["messages"][0]["content"] for r in requests]
    if way == "cache_prompt":
        assert all(r["body"]["cache_prompt"] is False for r in requests) and firsts == [PROMPTS[0]] * 3
    else:       # a fresh marker each time: no sending can be served from another's cache
        assert [t["marker"] for t in turns] == [f"[{run['run_id']}/{n}]\n" for n in (4, 5, 6)]
        assert firsts == [t["marker"] + PROMPTS[0] for t in turns]
    assert len({json.dumps(r["body"]["messages"][1:]) for r in requests}) == 1     # otherwise the same request


def test_probes_follow_the_last_repeat_and_count_turns_of_the_conversation(recording, facts):
    path, recorded = recording
    with ForkedServer(model("B")) as srv:
        ran, requests = chat_with(srv, "--history", str(path), "--at", "3,6", "--repeat", "2", "--probe-every", "1",
                                  "--facts", str(facts))
    assert ran.code == 0, ran.err
    kinds = [(r["kind"], r.get("turn") or r.get("after_turn")) for r in ran.records[1:]]
    assert kinds == [("turn", 3), ("turn", 4), ("probe", 4), ("probe", 4),
                     ("turn", 7), ("turn", 8), ("probe", 8), ("probe", 8)]
    assert all(assistants(requests[i]) == recorded[:3] for i in (2, 3))      # over prompt 3 entered once
    rows, out = measured(ran)
    recalls = [r for r in out.records if r["kind"] == "recall"]
    # as far back as in a run that sent each turn once (turns 3 and 6)
    assert [(r["fact_id"], r["stated_turn"], r["turns_since_stated"]) for r in recalls] == [
        ("tempo", 1, 2), ("bins", 2, 1), ("tempo", 1, 5), ("bins", 2, 4)]
    exchange = [tokens.count(p) + tokens.count(a) for p, a in zip(PROMPTS, recorded)]
    assert [r["tokens_since_stated"] for r in recalls] == [
        sum(exchange[:3]), sum(exchange[1:3]), sum(exchange[:6]), sum(exchange[1:6])]
    doc = json.loads(run_main(report.main, ["--format", "json"], out.out).out)
    assert [(d["turn"], d["prompt_id"], d["repeats"], d["probes"]) for d in doc["depths"]] == [
        (4, 3, 2, 2), (8, 6, 2, 2)]


TTFT_S = (0.1, 0.4, 0.7)


def timed(i, body):
    """The k-th sending of a turn has its first token after TTFT_S[k] and decodes at (k + 1) x 100 tok/s."""
    return stream("plain", n_content=8, ttft_s=TTFT_S[i % 3], rate_tps=100.0 * (1 + i % 3),
                  prompt_tokens=400 + 300 * (i // 3))[0]


def mean_sd(rows, field, places):
    values = [r[field] for r in rows]
    return round(statistics.fmean(values), places), round(statistics.stdev(values), places)


def test_the_depth_table_gives_the_mean_and_sd_of_each_turns_repeats(recording):
    with ForkedServer(timed) as srv:
        ran, _ = chat_with(srv, "--history", str(recording[0]), "--at", "3,6", "--repeat", "3")
    assert ran.code == 0, ran.err
    rows, out = measured(ran)
    ttft = [r["ttft_s"] for r in rows]
    assert ttft[0] < ttft[1] < ttft[2] and ttft[3] < ttft[4] < ttft[5]        # as scheduled
    doc = json.loads(run_main(report.main, ["--format", "json"], out.out).out)
    stats = [{"ttft": mean_sd(rs, "ttft_s", 6), "prefill": mean_sd(rs, "prefill_tps", 3),
              "decode": mean_sd(rs, "decode_tps", 3)} for rs in (rows[:3], rows[3:])]
    assert [(d["turn"], d["prompt_id"], d["repeats"], d["context_tokens"], (d["ttft_s"], d["ttft_sd"]),
             (d["prefill_tps"], d["prefill_tps_sd"]), (d["decode_tps"], d["decode_tps_sd"]))
            for d in doc["depths"]] == [(r["turn"], r["prompt_id"], 3, r["context_tokens"], s["ttft"], s["prefill"],
                                         s["decode"]) for r, s in zip((rows[2], rows[5]), stats)]
    assert 0.15 < doc["depths"][0]["ttft_sd"] < 0.6                       # the schedule's 0.3 s spread
    text = run_main(report.main, [], out.out).out
    table = text.split("after the turn)\n\n")[1].split("\n\n")[0].splitlines()
    cells = [[f"{s['ttft'][0]:.3f} ± {s['ttft'][1]:.3f}", f"{s['prefill'][0]:.1f} ± {s['prefill'][1]:.1f}",
              f"{s['decode'][0]:.1f} ± {s['decode'][1]:.1f}"] for s in stats]
    assert [" ".join(line.split()) for line in table[1:]] == [
        f"- {r['context_tokens']} {r['context_tokens_est']} {r['turn']} {c[0]} {c[1]} 0% {c[2]} 0 -"
        for r, c in zip((rows[2], rows[5]), cells)]
    md = run_main(report.main, ["--format", "markdown"], out.out).out
    assert (f"| - | {rows[2]['context_tokens']} | {rows[2]['context_tokens_est']} | {rows[2]['turn']} "
            f"| {cells[0][0]} | {cells[0][1]} | 0% "
            f"| {cells[0][2]} |") in md


def test_the_depth_of_a_turn_sent_three_times_by_hand():
    def row(turn, repeat, ttft, prefill, decode, cached, prompt_id=3):
        return Metrics(run_id="r", turn=turn, prompt_id=prompt_id, repeat=repeat, ttft_s=ttft, prefill_tps=prefill,
                       decode_tps=decode, prompt_tokens=1000, cached_tokens=cached, reasoning_tokens=2 * turn,
                       context_tokens=1000 + turn, context_tokens_source=CountSource.SERVER)
    rows = [row(3, 1, 1.0, 100.0, 10.0, 0), row(4, 2, 1.2, 120.0, 10.0, 500), row(5, 3, 1.4, 140.0, 13.0, 1000),
            row(8, None, 2.0, 50.0, 8.0, 0, prompt_id=6)]
    asked = [Recall(run_id="r", after_turn=5, fact_id="x", expected="1", answer="1", correct=True)]
    three, once = aggregate.depths(rows, asked, {3: 1024})
    assert (three.turn, three.prompt_id, three.repeats, three.context_tokens, three.probes, three.recalled) == (
        5, 3, 3, 1005, 1, 1)
    assert (three.ttft_s, three.ttft_sd, three.prefill_tps, three.prefill_tps_sd) == (1.2, 0.2, 120.0, 20.0)
    assert (three.decode_tps, three.decode_tps_sd) == (11.0, 1.732)            # sd: sqrt((1 + 1 + 4) / 2)
    assert (three.cached_share, three.reasoning_tokens) == (0.5, 8)            # 1,500 of 3,000 prompt tokens
    assert [get(three) for _, get in DEPTH_COLUMNS] == [
        "1024", "1005", "-", "5", "1.200 ± 0.200", "120.0 ± 20.0", "50%", "11.0 ± 1.7", "8", "1/1"]
    assert (once.turn, once.repeats, once.ttft_s, once.ttft_sd, once.decode_tps_sd) == (8, 1, 2.0, None, None)
    assert [get(once) for _, get in DEPTH_COLUMNS][:6] == ["-", "1008", "-", "8", "2.000", "50.0"]


@pytest.mark.parametrize("flags", [["--repeat", "3"], ["--history", "h.jsonl", "--repeat", "2"]])
def test_repeat_without_chosen_turns_is_refused_before_any_input(flags, api_key):
    ran = run_main(chat.main, ["--base-url", "http://127.0.0.1:9/v1", *flags], "not json at all\n")
    assert ran.code == 2 and ran.out == ""
    assert ran.err == "lalm-chat: error: --repeat needs --at, --every or --depths: it sends each chosen turn again\n"
