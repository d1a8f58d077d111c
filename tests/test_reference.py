"""The reference conversation: what an answer must not say, how depths in tokens choose
their turns, and the shipped file itself (its provenance, size, health and that it leaks
no planted fact)."""
import pytest

from lalmpipe import reference
from lalmpipe.errors import UsageError
from lalmpipe.facts import DEFAULT_FACTS, load_facts
from lalmpipe.history import History, depth_turns
from lalmpipe.records import HistorySource, Prompt
from lalmpipe.tokens import count

FACTS = {f.id: f for f in load_facts(DEFAULT_FACTS)["facts"]}


@pytest.mark.parametrize("sentence, fact, leaks", [
    ("Record it at 48 kHz for the session.", "sample_rate", True),
    ("Forty-eight thousand samples a second is plenty.", "sample_rate", True),
    ("A session at 44.1 kHz is the CD's rate.", "sample_rate", True),        # a rival of the same kind
    ("A higher rate moves the Nyquist limit up.", "sample_rate", False),
    ("Set the limiter's ceiling at -1 dBTP.", "limiter_ceiling", True),
    ("The limiter sits last in the chain.", "limiter_ceiling", False),
])
def test_a_sentence_leaks_a_fact_when_it_states_its_value_or_a_rival(sentence, fact, leaks):
    assert reference.leaks(sentence, FACTS[fact]) is leaks


def test_cleaning_removes_only_the_sentences_that_leak():
    answer = "Sample rates matter. Use 48 kHz here. Bit depth is separate.\nKeep headroom."
    text, removed = reference.clean(answer, [FACTS["sample_rate"]])
    assert (text, removed) == ("Sample rates matter. Bit depth is separate.\nKeep headroom.", 1)


def test_an_answer_looping_on_itself_is_degenerate():
    assert reference.degenerate("")
    assert reference.degenerate("the filter removes noise from the signal. " * 12)
    assert not reference.degenerate("A limiter caps peaks; a compressor shapes dynamics over time, "
                                    "and both change how loud the master feels against its references.")


def history(answers: dict[int, str]) -> History:
    texts = {pid: (f"question {pid}", a) for pid, a in answers.items()}
    return History(HistorySource(path="h", run_id="h", sha256="0" * 64, answers=len(texts)), texts)


def test_each_depth_is_the_first_turn_whose_request_reaches_it():
    prompts = [Prompt(id=i, tier="foundations", text=f"question {i}") for i in range(1, 11)]
    h = history({i: "word " * 100 for i in range(1, 11)})
    q, a = count("question 1"), count("word " * 100)
    chosen = depth_turns(h, prompts, [250, 500, 10])
    request = {i: (i - 1) * (q + a) + q for i in range(1, 11)}       # each question a same-sized count
    for pid, target in chosen.items():
        assert request[pid] >= target and (pid == 1 or request[pid - 1] < target)
        assert request[pid] - target <= q + a                       # within one exchange of the target
    assert sorted(chosen.values()) == [10, 250, 500]
    with pytest.raises(UsageError, match="--depths 100,000: the history .h. reaches"):
        depth_turns(h, prompts, [100_000])



def test_without_the_reference_a_depth_run_says_how_to_get_one(tmp_path):
    with pytest.raises(UsageError, match=r"make reference writes it\): give --history RECORDING"):
        reference.read_reference(tmp_path / "lalm_reference.jsonl")


def test_two_models_at_the_same_depths_are_sent_byte_identical_requests(api_key):
    import json
    import os

    from conftest import ROOT, run_main
    from lalmpipe import chat
    from lalmpipe.prompts import DEFAULT_FILE, load
    from scripted import ForkedServer, _chunk, sse

    def answer(i, body):
        return sse((0.01, _chunk({"content": "An answer."})), (0.02, _chunk({}, finish="stop")), (0.03, "[DONE]"))
    example = os.path.join(ROOT, "docs", "examples", "smollm2.jsonl")
    prompts = "".join(json.dumps(p.to_dict()) + "\n" for p in load(DEFAULT_FILE))
    sent, runs = [], []
    for model in ("model-a", "model-b"):
        with ForkedServer(answer, models=[model]) as srv:
            ran = run_main(chat.main, ["--base-url", srv.base_url, "-q", "--history", example,
                                       "--depths", "300,700,1100", "--temperature", "0"], prompts)
            assert ran.code == 0, ran.err
            sent.append([json.dumps(r["body"]["messages"]) for r in srv.requests])
            runs.append(ran.records)
    assert len(sent[0]) == 3 and sent[0] == sent[1]
    settings = runs[0][0]["settings"]
    assert [target for _, target in settings["depths"]] == [300, 700, 1100]
    assert settings["at"] == [pid for pid, _ in settings["depths"]]
