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
    r"the adapter|the vocal compressor|mixnotes|my track|the limiter|the plugin|juno|the session rate|"
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


def test_the_story_holds_together():
    prompts = load(DEFAULT_FILE)
    texts = {p.id: p.text for p in prompts}
    assert not any("five stems" in t or "field recording" in t for t in texts.values())
    # the mid-only mel view is decided before it is relied on
    decided = min(i for i, t in texts.items() if "mid channel only" in t)
    assert decided < min(i for i, t in texts.items() if "mid-only" in t) and "decided" in texts[decided]
    # the ladder is placed on the sub bass, never on the pad (an OTA cascade)
    ladder = min(i for i, t in texts.items() if "ladder" in t)
    assert "sub bass" in texts[ladder]
    assert not any("ladder" in t and "pad" in t for t in texts.values())
    # each change of the saturation stage is said as a change
    assert "tape" in texts[33] and "replaced the tape plugin" in texts[98]
    assert "hard-clip mode I'm adding" in texts[220]


def test_file_is_plain_json():
    with open(DEFAULT_FILE, encoding="utf-8") as fp:
        data = json.load(fp)
    assert all(set(d) == {"id", "tier", "text"} for d in data)
