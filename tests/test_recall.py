"""Does the model still remember? Forked probes, scoring, the rule, the effective context."""
import json

import pytest

from conftest import prompts_jsonl, run_main
from lalmpipe import aggregate, chat, metrics, recall, report
from lalmpipe.facts import DEFAULT_FACTS, load_facts
from lalmpipe.records import Fact
from lalmpipe.results import Round
from scripted import FACTS, ForkedServer, scripted_model, sse


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
def test_scoring_a_fact_without_expect_reads_its_answer(answer, expected, ok):
    fact = Fact(id="x", stated_in=1, question="q?", answer=expected)
    assert recall.correct(answer, fact) is ok


def test_repeat_ratio_and_effective_context_by_hand():
    assert recall.repeat_ngram_ratio("a b c d e f") == 0.0
    assert recall.repeat_ngram_ratio("la la la la la la") == 0.75        # 4 trigrams, 1 distinct
    assert recall.repeat_ngram_ratio("too short") is None
    rounds = [Round(after_turn=i, probes=1, recall=r, n=1, recalled=round(r), ci95=None, context_tokens=c)
              for i, (r, c) in enumerate([(1.0, 500), (0.9, 1000), (0.5, 1500), (1.0, 2000)])]
    assert aggregate.effective_context(rounds, 0.9) == 1000      # stays >= 0.9 up to 1,000 tokens
    assert aggregate.effective_context(rounds, 0.85 * 1.0) == 1000
    assert aggregate.effective_context(rounds, 0.4) == 2000


def test_shipped_facts_are_stated_in_their_prompts():
    from lalmpipe.prompts import DEFAULT_FILE, load
    texts = {p.id: p.text for p in load(DEFAULT_FILE)}
    doc = load_facts(DEFAULT_FACTS)
    assert len(doc["facts"]) >= 8
    for fact in doc["facts"]:
        assert recall.correct(texts[fact.stated_in], fact), fact.id
    assert doc["rule"]["text"] and doc["rule"]["check"]


@pytest.mark.parametrize("fact, message", [
    ({"answer": "none"}, "fact x: the answer must hold a number to check"),
    ({"answer": "48 kHz", "expect": [{"value": 48, "unit": "parsecs"}]}, "fact x: unknown unit 'parsecs'"),
    ({"answer": "48 kHz", "expect": [{"value": 44.1, "unit": "kHz"}]},
     "fact x: its answer '48 kHz' does not meet its expect"),
    ({"answer": "4:1", "expect": [{"ratio": "four"}]}, "fact x: an expect item is {value, unit}"),
])
def test_a_bad_facts_file_is_named(tmp_path, api_key, fact, message):
    f = tmp_path / "facts.json"
    f.write_text(json.dumps({"facts": [{"id": "x", "stated_in": 1, "question": "q?", **fact}]}))
    ran = run_main(chat.main, ["--base-url", "http://127.0.0.1:9/v1", "--probe-every", "2",
                               "--facts", str(f)], prompts_jsonl(["a"]))
    assert ran.code == 1 and f"{f}: {message}" in ran.err, ran.err


def test_probes_find_the_effective_context_and_stay_out_of_the_conversation(tmp_path, api_key):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(FACTS))
    questions = {f["question"] for f in FACTS["facts"]}
    with ForkedServer(scripted_model) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q", "--probe-every", "2",
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
    # facts asked right after they were said count only with --min-fact-age 0
    assert json.loads(run_main(report.main, ["--format", "json"], measured.out).out)["memory"]["rounds"] == []
    doc = json.loads(run_main(report.main, ["--format", "json", "--min-fact-age", "0"], measured.out).out)
    m = doc["memory"]
    # a round's context is its turn's (100 x messages + 5): right after turns 2 and 4 (the probes'
    # own requests hold 505 and 905), wrong from turn 6 (1,305) on
    assert [(r["after_turn"], r["context_tokens"], r["recall"]) for r in m["rounds"]] == [
        (2, 305, 1.0), (4, 705, 1.0), (6, 1105, 0.0), (8, 1505, 0.0), (10, 1905, 0.0)]
    assert m["effective_context_tokens"] == 705
    assert m["effective_context_relative_tokens"] == 705
    assert m["rule_first_broken"]["turn"] == 6 and m["rule_kept_turns"] == 5
    text = run_main(report.main, ["--min-fact-age", "0"], measured.out).out
    assert "effective context 705 tokens (recall >= 90%)" in text
    assert "Rule         kept in 5 of 10 answers judged; first broken at turn 6" in text


K_TOKENS = 1500     # the scripted model remembers what was said in its last K tokens


def remembers_last_k(i, body):
    """100 tokens a message; a fact is answered right while its statement is within K tokens."""
    messages = body["messages"]
    prompt_tokens = 100 * len(messages)
    asked = messages[-1]["content"]
    if asked.startswith("Which number did prompt "):
        stated = int(asked.split()[4].rstrip("?"))
        since = prompt_tokens - 100 * 2 * (stated - 1)
        text = f"It was {40 + stated}." if since <= K_TOKENS else "It was 12."
    else:
        text = "Noted" + " word" * 98          # about 100 cl100k tokens, as the server counts
    return sse((0.01, json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})),
               (0.02, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5}})),
               (0.03, "[DONE]"))


def test_a_model_that_remembers_k_tokens_has_an_effective_context_of_about_k(tmp_path, api_key):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"facts": [
        {"id": f"n{s}", "stated_in": s, "question": f"Which number did prompt {s} give?",
         "answer": str(40 + s)} for s in range(1, 7)]}))
    texts = [(f"prompt {i}: remember the number {40 + i}." if i <= 6 else f"prompt {i}.") + " word" * 90
             for i in range(1, 22)]
    with ForkedServer(remembers_last_k) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q", "--probe-every", "3",
                                   "--facts", str(facts)], prompts_jsonl(texts))
    assert ran.code == 0, ran.err
    measured = run_main(metrics.main, [], ran.out)
    recalls = [r for r in measured.records if r["kind"] == "recall"]
    first = next(r for r in recalls if r["after_turn"] == 6 and r["fact_id"] == "n1")
    assert (first["stated_turn"], first["turns_since_stated"], first["depth"]) == (1, 5, 0.0)
    later = next(r for r in recalls if r["after_turn"] == 9 and r["fact_id"] == "n1")
    assert later["tokens_since_stated"] > first["tokens_since_stated"] > 0
    doc = json.loads(run_main(report.main, ["--format", "json", "--min-fact-age", "3"], measured.out).out)
    m = doc["memory"]
    rounds = [(r["after_turn"], r["context_tokens"], r["recall"]) for r in m["rounds"]]
    # probe rounds every 3 turns, 600 tokens apart: the last round with recall >= 0.9 is within one of K
    assert rounds[:3] == [(6, 1105, 1.0), (9, 1705, 0.6667), (12, 2305, 0.1667)]
    assert abs(m["effective_context_tokens"] - K_TOKENS) <= 600
    assert m["by_distance"][0]["recall"] == 1.0 and m["by_distance"][-1]["recall"] == 0.0
    assert {c["depth_from"] for c in m["grid"]} >= {0.0, 0.2}
    text = run_main(report.main, ["--min-fact-age", "3"], measured.out).out
    assert "By distance" in text and "By depth" in text
