"""Does the model still remember? Forked probes, scoring, the rule, the effective context."""
import json

import pytest

from conftest import prompts_jsonl, run_main
from lalmpipe import chat, metrics, recall, report
from lalmpipe.recall import DEFAULT_FACTS, load_facts
from scripted import ForkedServer, sse


@pytest.mark.parametrize("answer, expected, ok", [
    ("Your track runs at ninety-two BPM.", "92 BPM", True),
    ("92bpm", "92 BPM", True),
    ("It's 90 BPM.", "92 BPM", False),
    ("minus one point three dBTP", "-1.3 dBTP", True),
    ("\u22121.3 dB true peak", "-1.3 dBTP", True),
    ("a 4 to 1 ratio", "4:1", True),
    ("eight codebooks with one thousand twenty-four entries", "8 codebooks of 1,024 entries", True),
    ("8 codebooks, 1024 codes each", "8 codebooks of 1,024 entries", True),
    ("8 codebooks", "8 codebooks of 1,024 entries", False),
    ("One hundred and twenty milliseconds.", "120 ms", True),
    ("", "128", False),
])
def test_scoring_normalises(answer, expected, ok):
    assert recall.correct(answer, expected) is ok


def test_repeat_ratio_and_effective_context_by_hand():
    assert recall.repeat_ngram_ratio("a b c d e f") == 0.0
    assert recall.repeat_ngram_ratio("la la la la la la") == 0.75        # 4 trigrams, 1 distinct
    assert recall.repeat_ngram_ratio("too short") is None
    rounds = [{"recall": 1.0, "context_tokens": 500}, {"recall": 0.9, "context_tokens": 1000},
              {"recall": 0.5, "context_tokens": 1500}, {"recall": 1.0, "context_tokens": 2000}]
    assert recall.effective_context(rounds, 0.9) == 1000      # stays >= 0.9 up to 1,000 tokens
    assert recall.effective_context(rounds, 0.85 * 1.0) == 1000
    assert recall.effective_context(rounds, 0.4) == 2000


def test_shipped_facts_are_stated_in_their_prompts():
    from lalmpipe.prompts import DEFAULT_FILE, load
    texts = {p.id: p.text for p in load(DEFAULT_FILE)}
    doc = load_facts(DEFAULT_FACTS)
    assert len(doc["facts"]) >= 8
    for fact in doc["facts"]:
        assert recall.correct(texts[fact["stated_in"]], fact["answer"]), fact["id"]
    assert doc["rule"]["text"] and doc["rule"]["check"]


def test_a_bad_facts_file_is_named(tmp_path, api_key):
    f = tmp_path / "facts.json"
    f.write_text('{"facts": [{"id": "x", "stated_in": 1, "question": "q?", "answer": "none"}]}')
    ran = run_main(chat.main, ["--base-url", "http://127.0.0.1:9/v1", "--probe-every", "2",
                               "--facts", str(f)], prompts_jsonl(["a"]))
    assert ran.code == 1 and f"{f}: fact x: the answer must hold a number" in ran.err


FACTS = {"rule": {"text": "End every answer with the word OVER.", "check": r"OVER\W*$"},
         "facts": [{"id": "tempo", "stated_in": 1, "question": "What tempo, in BPM?", "answer": "92 BPM"},
                   {"id": "bins", "stated_in": 2, "question": "How many mel bins?", "answer": "128"},
                   {"id": "later", "stated_in": 9, "question": "Never stated yet?", "answer": "7"}]}
FORGETS_AT = 1000   # the scripted model answers probes right below this many prompt tokens


def scripted_model(i, body):
    """Prompt tokens grow 100 a message; probes are answered right until FORGETS_AT;
    the rule is kept until the sixth user message."""
    messages = body["messages"]
    prompt_tokens = 100 * len(messages)
    question = messages[-1]["content"]
    fact = next((f for f in FACTS["facts"] if f["question"] == question), None)
    if fact:
        text = fact["answer"] if prompt_tokens < FORGETS_AT else "I am not sure, 60 maybe."
    else:
        users = sum(m["role"] == "user" for m in messages)
        text = "An answer. OVER" if users < 6 else "An answer without the word."
    return sse((0.01, json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})),
               (0.02, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5}})),
               (0.03, "[DONE]"))


def test_probes_find_the_effective_context_and_stay_out_of_the_conversation(tmp_path, api_key):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(FACTS))
    questions = {f["question"] for f in FACTS["facts"]}
    with ForkedServer(scripted_model) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "--model", "m", "-q", "--probe-every", "2",
                                   "--facts", str(facts), "--probe-max-tokens", "20"],
                       prompts_jsonl([f"prompt {i}" for i in range(1, 11)]))
        requests = [r["body"] for r in srv.requests]
    assert ran.code == 0, ran.err
    kinds = [r["kind"] for r in ran.records]
    assert kinds[:4] == ["run", "turn", "turn", "probe"] and kinds.count("turn") == 10
    assert kinds.count("probe") == 11                 # 2 facts each round, the third once stated (turn 9)
    assert {r["connection"] for r in ran.records if r["kind"] == "probe"} == {"reused"}
    probe_bodies = [b for b in requests if b["messages"][-1]["content"] in questions]
    turn_bodies = [b for b in requests if b["messages"][-1]["content"] not in questions]
    assert all(b["max_tokens"] == 20 for b in probe_bodies)
    for body in turn_bodies:                          # no probe ever enters the conversation
        assert not any(m["content"] in questions for m in body["messages"])
    assert turn_bodies[-1]["messages"][0]["content"] == "End every answer with the word OVER.\n\nprompt 1"
    assert len(turn_bodies[-1]["messages"]) == 19     # 9 exchanges + the tenth prompt
    # the probe after turn k carries exactly the history of k turns
    first_probe = probe_bodies[0]["messages"]
    assert [m["content"] for m in first_probe[:-1]] == [m["content"] for m in turn_bodies[2]["messages"][:-1]]

    measured = run_main(metrics.main, [], ran.out)
    recalls = [r for r in measured.records if r["kind"] == "recall"]
    assert [(r["after_turn"], r["fact_id"], r["correct"]) for r in recalls[:2]] == \
        [(2, "tempo", True), (2, "bins", True)]
    rows = [r for r in measured.records if r["kind"] == "metrics"]
    assert [r["rule_kept"] for r in rows] == [True] * 5 + [False] * 5
    doc = json.loads(run_main(report.main, ["--format", "json"], measured.out).out)
    m = doc["memory"]
    # probe context = 100 x messages + 5: right at 505, 905; wrong from 1305 on
    assert [(r["after_turn"], r["context_tokens"], r["recall"]) for r in m["rounds"]] == [
        (2, 505, 1.0), (4, 905, 1.0), (6, 1305, 0.0), (8, 1705, 0.0), (10, 2105, 0.0)]
    assert m["effective_context_tokens"] == 905
    assert m["effective_context_relative_tokens"] == 905
    assert m["rule_first_broken"]["turn"] == 6 and m["rule_kept_turns"] == 5
    text = run_main(report.main, [], measured.out).out
    assert "effective context 905 tokens (recall >= 90%)" in text
    assert "Rule         kept in 5 of 10 turns; first broken at turn 6" in text
