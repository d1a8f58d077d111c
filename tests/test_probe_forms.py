"""More probes for the same cost: each planted fact asked in several wordings
(lalm-chat --probe-forms), every wording forked off the same history and scored
the same way; against scripted servers whose requests are the truth."""
import json

from conftest import prompts_jsonl, run_main
from lalmpipe import chat, metrics
from lalmpipe.records import Probe
from scripted import FACTS, ForkedServer, sse
from test_replay import start_replay, stop

# the scripted facts, two of them with other wordings: tempo two, bins one, later none
WORDED = {"rule": FACTS["rule"], "facts": [
    dict(FACTS["facts"][0], questions=["How fast is my track?", "Beats per minute of my song?"]),
    dict(FACTS["facts"][1], questions=["How many bands has the mel view?"]),
    FACTS["facts"][2]]}
ANSWERS = {q: f["answer"] for f in WORDED["facts"] for q in [f["question"], *f.get("questions", [])]}


def knows_every_wording(i, body):
    """Right about every wording of a fact, whatever the depth; a plain answer to a turn."""
    text = ANSWERS.get(body["messages"][-1]["content"], "An answer. OVER")
    return sse((0.01, json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})),
               (0.02, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 10 * len(body["messages"]), "completion_tokens": 3}})),
               (0.03, "[DONE]"))


def probed(tmp_path, *args, n=4):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(WORDED))
    with ForkedServer(knows_every_wording) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q", "--probe-every", "2",
                                   "--facts", str(facts), *args],
                       prompts_jsonl([f"prompt {i}" for i in range(1, n + 1)]))
        requests = [r["body"] for r in srv.requests]
    assert ran.code == 0, ran.err
    return ran, requests


def test_a_probe_round_asks_each_fact_in_its_first_two_wordings_off_one_prefix(tmp_path, api_key):
    ran, requests = probed(tmp_path)
    tempo, bins = WORDED["facts"][0], WORDED["facts"][1]
    # after turn 2: each fact's question, then each one's second wording; after turn 4 the same
    round_ = [tempo["question"], bins["question"], tempo["questions"][0], bins["questions"][0]]
    assert [b["messages"][-1]["content"] for b in requests] == [
        f"{FACTS['rule']['text']}\n\nprompt 1", "prompt 2", *round_, "prompt 3", "prompt 4", *round_]
    for first in (2, 8):
        prefixes = {json.dumps(b["messages"][:-1]) for b in requests[first:first + 4]}
        assert len(prefixes) == 1                        # one history, one cached prefix
        assert json.loads(prefixes.pop()) == requests[first - 1]["messages"] + [
            {"role": "assistant", "content": "An answer. OVER"}]
    assert all(q not in json.dumps(requests[6]["messages"]) for q in round_)   # none entered the history
    probes = [r for r in ran.records if r["kind"] == "probe"]
    assert [(p["after_turn"], p["fact"]["id"], p["form"], p["question"]) for p in probes[:4]] == [
        (2, "tempo", 0, round_[0]), (2, "bins", 0, round_[1]), (2, "tempo", 1, round_[2]), (2, "bins", 1, round_[3])]
    out = run_main(metrics.main, [], ran.out)
    recalls = [r for r in out.records if r["kind"] == "recall"]
    # each wording scored the same way, and none dropped as a repeat of another
    assert [(r["after_turn"], r["fact_id"], r["form"], r["question"], r["correct"]) for r in recalls] == [
        (t, f, k, q, True) for t in (2, 4) for (f, k), q in zip(
            [("tempo", 0), ("bins", 0), ("tempo", 1), ("bins", 1)], round_)]
    assert "warning" not in out.err


def test_more_forms_than_a_fact_has_asks_those_it_has_and_one_form_asks_only_the_question(tmp_path, api_key):
    tempo, bins = WORDED["facts"][0], WORDED["facts"][1]
    three, requests = probed(tmp_path, "--probe-forms", "3", n=2)
    assert [b["messages"][-1]["content"] for b in requests[2:]] == [
        tempo["question"], bins["question"], tempo["questions"][0], bins["questions"][0], tempo["questions"][1]]
    assert three.records[0]["settings"]["probe_forms"] == 3
    one, requests = probed(tmp_path, "--probe-forms", "1", n=2)
    assert [b["messages"][-1]["content"] for b in requests[2:]] == [tempo["question"], bins["question"]]
    assert [p["form"] for p in one.records if p["kind"] == "probe"] == [0, 0]


def test_a_probe_recorded_before_forms_is_form_0_asking_its_question(tmp_path, api_key):
    ran, _ = probed(tmp_path, "--probe-forms", "1", n=2)
    old = []
    for r in ran.records:
        if r["kind"] == "probe":
            r = {k: v for k, v in r.items() if k not in ("form", "question")}
            r["fact"] = {k: v for k, v in r["fact"].items() if k != "questions"}
        old.append(json.dumps(r))
    probe = Probe.from_dict(json.loads(old[3]))
    assert (probe.form, probe.question, probe.asked) == (0, None, FACTS["facts"][0]["question"])
    recalls = [r for r in run_main(metrics.main, [], "\n".join(old) + "\n").records if r["kind"] == "recall"]
    assert [(r["fact_id"], r["form"], r["question"], r["correct"]) for r in recalls] == [
        ("tempo", 0, FACTS["facts"][0]["question"], True), ("bins", 0, FACTS["facts"][1]["question"], True)]


def test_lalm_replay_answers_each_wording_as_recorded(tmp_path, api_key):
    ran, _ = probed(tmp_path, n=2)
    recording = tmp_path / "probed.jsonl"
    recording.write_text(ran.out)
    proc, url = start_replay(str(recording), "--speed", "0")
    try:
        again = run_main(chat.main, ["--base-url", url, "--model", "scripted", "-q", "--probe-every", "2",
                                     "--facts", str(tmp_path / "facts.json")], prompts_jsonl(["prompt 1", "prompt 2"]))
    finally:
        stop(proc)
    assert again.code == 0, again.err
    probes = [(r["form"], r["status"], r["content"]) for r in again.records if r["kind"] == "probe"]
    assert probes == [(0, "ok", "92 BPM"), (0, "ok", "128"), (1, "ok", "92 BPM"), (1, "ok", "128")]


def test_a_blank_wording_is_refused_naming_the_fact(tmp_path, api_key):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"facts": [dict(FACTS["facts"][0], questions=["How fast?", "  "])]}))
    ran = run_main(chat.main, ["--base-url", "http://127.0.0.1:9/v1", "--probe-every", "1", "--facts", str(facts)],
                   prompts_jsonl(["a"]))
    assert ran.code == 1 and ran.err == f"lalm-chat: error: {facts}: fact tempo: its questions[1] is empty\n"
