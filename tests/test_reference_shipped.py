"""The reference conversation that ships (prompts/lalm_reference.jsonl): its provenance, its
size, its health, and that it leaks no planted fact."""
from lalmpipe import history, reference
from lalmpipe.facts import DEFAULT_FACTS, load_facts
from lalmpipe.tokens import count

FACTS = {f.id: f for f in load_facts(DEFAULT_FACTS)["facts"]}

HEAD, ANSWERS = reference.read_reference()


def test_it_answers_every_prompt_and_says_how_it_was_made():
    from lalmpipe.localserver.catalog import LLAMA_CPP, MODELS
    from lalmpipe.prompts import DEFAULT_FILE, load
    assert sorted(ANSWERS) == [p.id for p in load(DEFAULT_FILE)] and HEAD["answers"] == 231
    assert HEAD["model"] == "qwen2.5-coder-0.5b" and HEAD["model_sha256"] == MODELS["qwen2.5-coder-0.5b"].sha256
    assert LLAMA_CPP.requirement in HEAD["engine"] and HEAD["engine_sources_sha256"] == LLAMA_CPP.sha256
    assert HEAD["settings"] == reference.SETTINGS
    assert all({"temperature", "seed", "finish_reason", "removed_sentences"} <= set(a) for a in ANSWERS.values())


def test_it_is_deep_enough_for_32k_with_room():
    from lalmpipe.prompts import DEFAULT_FILE, load
    total = sum(count(p.text) + count(ANSWERS[p.id]["answer"]) for p in load(DEFAULT_FILE))
    assert total >= 48_000, total


def test_no_answer_is_empty_or_loops():
    looping = {pid: a for pid, a in ANSWERS.items() if reference.degenerate(a["answer"])}
    assert not looping, sorted(looping)


def test_no_answer_states_or_contradicts_a_fact_stated_before_it():
    leaking = [(pid, f.id, sentence) for pid, a in ANSWERS.items() for f in FACTS.values() if f.stated_in <= pid
               for sentence in reference.SENTENCE.split(a["answer"]) if reference.leaks(sentence, f)]
    assert not leaking, leaking[:5]


def test_its_sha256_is_the_one_the_readme_gives():
    import os

    from conftest import ROOT
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fp:
        assert reference.sha256(reference.REFERENCE) in fp.read()


def test_the_readme_gives_where_each_fact_stands():
    import os

    from conftest import ROOT
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fp:
        assert history.depth_table() in fp.read()


def test_the_answers_stay_on_the_topic_of_their_prompts():
    """Each answer shares words of substance with its prompt (a loose check: a 0.5B model)."""
    import re

    from lalmpipe.prompts import DEFAULT_FILE, load

    def words(text):
        return {w for w in re.findall(r"[a-z]{6,}", text.lower())}
    off = [p.id for p in load(DEFAULT_FILE) if len(words(p.text) & words(ANSWERS[p.id]["answer"])) < 2]
    assert len(off) <= 231 // 20, off          # at most one in twenty
