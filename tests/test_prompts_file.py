"""The shipped conversation: 231 prompts in six tiers, checked as issue-free data."""
import itertools
import json
import re

from lalmpipe.prompts import DEFAULT_FILE, load
from lalmpipe.records import TIERS

EXPECTED = {"foundations": (1, 40), "intermediate": (41, 80), "advanced": (81, 120),
            "expert": (121, 160), "obscure": (161, 200), "ultra-deep": (201, 231)}
BACK_REFERENCE = re.compile(
    r"earlier|discussed|settled|we chose|back to|building on|we built|we designed|we derived|"
    r"we fixed|we picked|we agreed|you suggested|we computed|recall|remember|the codec|"
    r"the adapter|the vocal compressor|mixnotes|92 bpm|dbtp|the plugin|juno|128-bin|"
    r"the saturation|the mel view|the encoder|mixscribe|our ", re.IGNORECASE)


def words(text):
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def test_counts_ranges_and_order():
    prompts = load(DEFAULT_FILE)
    assert len(prompts) == 231
    assert [p.id for p in prompts] == list(range(1, 232))
    for tier, (lo, hi) in EXPECTED.items():
        assert [p.id for p in prompts if p.tier == tier] == list(range(lo, hi + 1))
    assert list(EXPECTED) == list(TIERS)


def test_lengths():
    for p in load(DEFAULT_FILE):
        assert 20 <= len(p.text.split()) <= 120, p.id
        assert p.text == p.text.strip() and "\n" not in p.text


def test_no_near_duplicates():
    prompts = load(DEFAULT_FILE)
    ws = {p.id: words(p.text) for p in prompts}
    for a, b in itertools.combinations(prompts, 2):
        shared = len(ws[a.id] & ws[b.id])
        assert shared <= 0.5 * min(len(ws[a.id]), len(ws[b.id])), (a.id, b.id)


def test_the_conversation_refers_back():
    later = [p for p in load(DEFAULT_FILE) if p.id > 10]
    referring = [p for p in later if BACK_REFERENCE.search(p.text)]
    assert len(referring) >= len(later) / 3


def test_session_facts_are_stated_early():
    early = " ".join(p.text for p in load(DEFAULT_FILE)[:45])
    for fact in ("92 BPM", "-1.3 dBTP", "8 codebooks of 1,024", "4:1", "128-bin"):
        assert fact in early, fact


def test_file_is_plain_json():
    with open(DEFAULT_FILE, encoding="utf-8") as fp:
        data = json.load(fp)
    assert all(set(d) == {"id", "tier", "text"} for d in data)
