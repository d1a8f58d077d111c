"""The shipped facts against the shipped conversation: each stated once, in its prompt,
and never restated after it in any written form; spread over the conversation."""
import json
import math
import os

from lalmpipe import recall
from lalmpipe.numerals import numbers
from lalmpipe.prompts import DEFAULT_FILE, load
from lalmpipe.facts import DEFAULT_FACTS, load_facts

PROMPTS = load(DEFAULT_FILE)
FACTS = load_facts(DEFAULT_FACTS)["facts"]


def found(forms, text):
    """The forms among the numbers written in the text."""
    return sorted({f for f in forms for n in numbers(text) if math.isclose(f, n, rel_tol=1e-9)})


def test_each_fact_is_stated_in_its_prompt():
    texts = {p.id: p.text for p in PROMPTS}
    for fact in FACTS:
        assert recall.correct(texts[fact.stated_in], fact), (fact.id, fact.stated_in)


def test_no_fact_is_restated_after_its_prompt():
    restated = [f"prompt {p.id} restates {fact.id} as {form:g}"
                for fact in FACTS for p in PROMPTS if p.id > fact.stated_in
                for form in found(recall.value_forms(fact), p.text)]
    assert not restated, "\n".join(restated)


def test_the_scan_reads_every_written_form():
    release = next(f for f in FACTS if f.id == "compressor_release")
    forms = recall.value_forms(release)
    for text in ("a 120 ms release", "0.12 s", "one hundred and twenty milliseconds", "120ms"):
        assert found(forms, text), text
    rate = next(f for f in FACTS if f.id == "sample_rate")
    for text in ("48,000 times a second", "48000", "forty-eight thousand", "48k", "48 kHz", "2x48000"):
        assert found(recall.value_forms(rate), text), text
    assert not found(recall.value_forms(rate), "a 480-tap FIR at 44.1 kHz")


def test_no_wording_of_a_question_holds_its_answer():
    for fact in FACTS:
        for k, question in enumerate(fact.wordings):
            assert not found(recall.value_forms(fact), question), (fact.id, k)
            assert not recall.correct(question, fact), (fact.id, k)
            assert question.startswith("Quick check from earlier, answer in a few words: "), (fact.id, k)


def test_every_fact_can_be_asked_in_a_second_wording_of_its_own():
    asked = [q.removeprefix("Quick check from earlier, answer in a few words: ") for f in FACTS for q in f.wordings]
    assert all(len(f.wordings) >= 2 for f in FACTS)
    assert len(set(asked)) == len(asked)            # no wording twice, of one fact or of two


def test_the_scan_would_catch_a_wording_that_gives_the_value_away():
    ceiling = next(f for f in FACTS if f.id == "limiter_ceiling")
    assert found(recall.value_forms(ceiling), "was the limiter ceiling minus one point three dBTP?")
    tempo = next(f for f in FACTS if f.id == "tempo")
    assert recall.correct("Quick check from earlier: is my track at ninety-two BPM?", tempo)


def test_facts_are_many_and_spread_over_the_conversation():
    tiers = {p.id: p.tier for p in PROMPTS}
    assert len(FACTS) >= 15
    assert len({f.id for f in FACTS}) == len(FACTS)
    assert len({tiers[f.stated_in] for f in FACTS}) >= 4
    assert {"foundations", "obscure", "ultra-deep"} <= {tiers[f.stated_in] for f in FACTS}


def test_the_shipped_example_recorded_these_prompts():
    """lalm-replay answers the example only for the prompts it recorded."""
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "docs", "examples", "smollm2.jsonl")
    with open(example, encoding="utf-8") as fp:
        recorded = [r["prompt"] for r in map(json.loads, fp) if r["kind"] == "turn"]
    texts = {p.id: p.text for p in PROMPTS}
    assert recorded and all(texts[r["id"]] == r["text"] for r in recorded)
