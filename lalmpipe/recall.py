"""Does the model still remember? Planted facts, their scoring, and the
effective context: pure functions, no clock, no network.

A fact is stated in one prompt (`stated_in`: the last that states it), never
repeated after it, and later asked again in a forked request that is not added to the
conversation. The facts file (the bundled lalm_facts.json, from the repository's
prompts/ folder, or --facts):

    {"rule": {"text": "... end every answer with the exact line \"-- MixScribe\".",
              "check": "<a regular expression the answer must match>"},
     "facts": [{"id": "release", "stated_in": 11,
                "question": "Quick check from earlier, answer in a few words: ...",
                "answer": "120 ms",                    # the canonical text
                "expect": [{"value": 120, "unit": "ms"}],
                "besides": ["attack"]}]}

`expect` lists what must all hold in a right answer; each item is one of

    {"value": 48, "unit": "kHz"}           a quantity, in any unit of its dimension in
                                           UNITS: 48 kHz = 48,000 Hz = 48000 Hz = 48k,
                                           120 ms = 0.12 s
    {"count": 128, "of": ["mel bin", "bin"]}  a count of named things: "128 mel bins",
                                           "128-bin", "one hundred twenty-eight"
    {"ratio": "4:1"}                       a ratio: 4:1, 4 to 1, four-to-one

How an answer is read: numbers in digits (with or without thousands
separators), decimals, signs (a unicode minus, "minus") and words ("one
hundred and twenty", "minus one point three", "three and a half"). A number
followed by a unit is a quantity, by a noun a count of it, by nothing (the
end, punctuation, a joining word) a bare number; in "44.1 or 48 kHz" and
"0 to 24 kHz" the first number takes the unit of the second. A bare number
stands for an item whose value it equals in some unit of its dimension.

An answer is right when it is not empty, is no refusal ("I don't know",
"not sure", ...: a hedged answer is not a recalled one), every item holds, and
no rival is named: no other value of an item's kind ("attack 4 ms ... 2:1" for
4:1; "48 kHz or 96 kHz"), no bare number that is no item's value. Negation is
not parsed: "48 kHz, not 44.1 kHz" names a rival and is wrong, like any answer
that offers candidates. A value up to three words after one of the fact's
`besides` words, or one word before it, in the same clause ("attack 10 ms",
"10 ms attack", not "attack and release 120 ms") belongs to that other
setting: neither a rival nor a match. Decibels: an unsigned value
may stand for its negative (a ceiling "of 1.3 dBTP"), a written sign must
match, and plain "dB" is of every decibel kind. A fact without `expect` (older
recordings) expects what its `answer` holds.
"""
from __future__ import annotations

import json
import math
import re
from typing import NamedTuple

import msgspec

from .bundled import bundled, open_text
from .errors import InputError
from .records import Fact

DEFAULT_FACTS = bundled("lalm_facts.json")

# The one unit table. Spelling (lower case; a space also matches a hyphen or
# nothing: "db tp" reads dBTP, dB TP, dB-TP) -> (dimension, factor to its base unit).
UNITS: dict[str, tuple[str, float]] = {
    "hz": ("frequency", 1.0), "hertz": ("frequency", 1.0),
    "khz": ("frequency", 1e3), "kilohertz": ("frequency", 1e3),
    "samples per second": ("frequency", 1.0), "samples a second": ("frequency", 1.0),
    "times per second": ("frequency", 1.0), "times a second": ("frequency", 1.0),
    "ms": ("time", 1e-3), "msec": ("time", 1e-3), "millisecond": ("time", 1e-3),
    "milliseconds": ("time", 1e-3),
    "s": ("time", 1.0), "sec": ("time", 1.0), "secs": ("time", 1.0), "second": ("time", 1.0),
    "seconds": ("time", 1.0),
    "min": ("time", 60.0), "mins": ("time", 60.0), "minute": ("time", 60.0),
    "minutes": ("time", 60.0),
    "hr": ("time", 3600.0), "hrs": ("time", 3600.0), "hour": ("time", 3600.0),
    "hours": ("time", 3600.0),
    "bpm": ("tempo", 1.0), "beats per minute": ("tempo", 1.0), "beats a minute": ("tempo", 1.0),
    "db tp": ("true_peak", 1.0), "db true peak": ("true_peak", 1.0),
    "lufs": ("loudness", 1.0), "lkfs": ("loudness", 1.0),
    "lu": ("loudness_range", 1.0),
    "db fs": ("full_scale", 1.0),
    "db": ("decibel", 1.0), "decibel": ("decibel", 1.0), "decibels": ("decibel", 1.0),
    "%": ("percent", 1.0), "percent": ("percent", 1.0), "per cent": ("percent", 1.0),
    "ohm": ("resistance", 1.0), "ohms": ("resistance", 1.0), "\u03c9": ("resistance", 1.0),
    "k ohm": ("resistance", 1e3), "k ohms": ("resistance", 1e3), "k \u03c9": ("resistance", 1e3),
    "kiloohm": ("resistance", 1e3), "kiloohms": ("resistance", 1e3),
    "pf": ("capacitance", 1e-12), "nf": ("capacitance", 1e-9), "uf": ("capacitance", 1e-6),
    "\u00b5f": ("capacitance", 1e-6), "\u03bcf": ("capacitance", 1e-6),
    "picofarad": ("capacitance", 1e-12), "picofarads": ("capacitance", 1e-12),
    "nanofarad": ("capacitance", 1e-9), "nanofarads": ("capacitance", 1e-9),
    "microfarad": ("capacitance", 1e-6), "microfarads": ("capacitance", 1e-6),
}
# dimensions written in decibels: plain "dB" is of each, and a sign may be left out
DECIBELS = {"decibel", "true_peak", "loudness", "loudness_range", "full_scale"}

SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
        if w != "_"}
_WORD = "|".join(sorted([*SMALL, *TENS, "hundred", "thousand"], key=len, reverse=True))
NUMBER_WORDS = re.compile(
    rf"\b(?:(?:minus|negative)[\s-]+)?(?:{_WORD})(?:[\s-]+(?:(?:and|point)[\s-]+)?(?:{_WORD}))*"
    rf"(?:[\s-]+and[\s-]+a[\s-]+half)?\b")
TYPOGRAPHY = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2010": "-", "\u2011": "-",
                            "\u2019": "'", "\u2236": ":"})
SEPARATOR = re.compile(r"(?<=\d)[,\u2009\u202f\u00a0](?=\d{3}(?!\d))")
NUMBER = re.compile(r"(?:(?<![\w.])|(?<=\d[x\u00d7]))([-+]?)(\d+(?:\.\d+)?)(k(?![a-z\u03c9]))?")   # 8x1024
_END = r"(?!\w|\.\d)"
RATIO = re.compile(rf"(?<![\w.])(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?){_END}"
                   rf"|(?<![\w.])(\d+(?:\.\d+)?)[\s-]*to[\s-]*(?:1|one){_END}")
_COMPACT = {k.replace(" ", ""): k for k in UNITS}     # "dbtp" -> "db tp"
UNIT = re.compile(r"[\s-]*(%s)(?!\w)" % "|".join(
    r"[\s-]*".join(map(re.escape, k.split())) for k in sorted(UNITS, key=len, reverse=True)))
JOIN = re.compile(r"\s*(?:-|to|or|versus|vs\.?)(?:\s+(?:maybe|perhaps|possibly))?\s*")
CLAUSE = re.compile(r"[,;.!?()\[\]\n\u2014\d]|\b(?:and|but|while|whereas|with)\b")
# words after which a number stands alone rather than counting something
STOPWORDS = set("or and to at in on with for is was but not maybe perhaps i it as the a an by "
                "from of so then which that if when approximately roughly about exactly".split())
REFUSAL = re.compile(
    r"\b(?:i (?:do not|don't|dont|cannot|can't|can not|am unable to) (?:know|recall|remember|say|tell|"
    r"find|see|determine|access)|(?:i'm|i am) not (?:sure|certain)|not sure|no way to know|"
    r"(?:don't|do not) have (?:any |that |the )?(?:information|memory|record|access)|"
    r"(?:wasn't|was not|weren't|were not|never|haven't|have not|hasn't|has not|didn't|did not) "
    r"(?:been )?(?:mention|specif|state|give|provide|told|say|said)|unable to|as an ai)")


def load_facts(path=DEFAULT_FACTS) -> dict:
    """Load and check a facts file: {rule: {text, check}, facts: [Fact]} (the module docstring)."""
    try:
        with open_text(path) as fp:
            doc = json.load(fp)
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise InputError(f"{path}:{getattr(e, 'lineno', 1)}: invalid JSON") from None
    facts = doc.get("facts") if isinstance(doc, dict) else None
    if not isinstance(facts, list) or not facts:
        raise InputError(f"{path}: needs a non-empty 'facts' list")
    for i, f in enumerate(facts, 1):
        missing = [k for k in ("id", "stated_in", "question", "answer") if not f.get(k)]
        if missing:
            raise InputError(f"{path}: fact {i} has no {', '.join(missing)}")
    rule = doc.get("rule")
    if rule is not None:
        try:
            re.compile(rule["check"])
        except (KeyError, TypeError, re.error) as e:
            raise InputError(f"{path}: rule needs 'text' and a regular expression 'check' ({e})") from None
    try:
        typed = [msgspec.convert(f, Fact) for f in facts]
    except msgspec.ValidationError as e:
        raise InputError(f"{path}: a fact: {e}") from None
    for fact in typed:
        _check_fact(path, fact)
    return {"rule": rule, "facts": typed}


def _check_fact(path: str, fact: Fact) -> None:
    try:
        expected = items(fact)
    except ValueError as e:
        raise InputError(f"{path}: fact {fact.id}: {e}") from None
    if not expected:
        raise InputError(f"{path}: fact {fact.id}: the answer must hold a number to check")
    if not correct(fact.answer, fact):
        raise InputError(f"{path}: fact {fact.id}: its answer {fact.answer!r} does not meet its expect")


# Reading numbers ------------------------------------------------------------------

def normalise(text: str) -> str:
    """Lower case, one kind of minus, no thousands separators, numbers in digits."""
    text = SEPARATOR.sub("", text.lower().translate(TYPOGRAPHY))
    return re.sub(r"\s+", " ", words_to_digits(text)).strip()


def words_to_digits(text: str) -> str:
    """Write numbers given in words as digits: 'ninety-two' -> '92'; 'two and three' -> '2 and 3'."""
    return NUMBER_WORDS.sub(lambda m: _spell(m.group(0)), text)


def _spell(phrase: str) -> str:
    words = re.findall(r"[a-z]+", phrase)
    if words == ["one"]:            # alone, "one" is far more often a pronoun than a value
        return phrase
    half = words[-3:] == ["and", "a", "half"]
    words = words[:-3] if half else words
    out, number = [], _Number()
    for w in words:
        if not number.take(w):
            out += number.flush()
            if not number.take(w):
                out.append(w)
    out += number.flush()
    if half and out and re.fullmatch(r"-?\d+", out[-1]):
        out[-1] += ".5"
    return f" {' '.join(out)} "


class _Number:
    """One number read word by word; `take` refuses a word that cannot continue it."""

    def __init__(self):
        self.sign, self.total, self.current, self.last, self.frac = "", 0, 0, None, None

    def take(self, w: str) -> bool:
        last, start = self.last, self.last in (None, "minus", "hundred", "thousand", "and")
        if w in ("minus", "negative") and last is None:
            self.sign, self.last = "-", "minus"
        elif self.frac is not None:
            if SMALL.get(w, 10) > 9:
                return False
            self.frac.append(str(SMALL[w]))
            self.last = "frac"
        elif w in SMALL and (start or (last == "tens" and 0 < SMALL[w] < 10)):
            self.current += SMALL[w]
            self.last = "unit" if SMALL[w] < 10 else "teen"
        elif w in TENS and start:
            self.current, self.last = self.current + TENS[w], "tens"
        elif w == "hundred" and last in (None, "minus", "unit", "teen") and self.current < 100:
            self.current, self.last = max(self.current, 1) * 100, "hundred"
        elif w == "thousand" and last in (None, "minus", "unit", "teen", "tens", "hundred"):
            self.total, self.current, self.last = self.total + max(self.current, 1) * 1000, 0, "thousand"
        elif w == "and" and last in ("hundred", "thousand"):
            self.last = "and"
        elif w == "point" and last in ("unit", "teen", "tens", "hundred", "thousand"):
            self.frac, self.last = [], "point"
        else:
            return False
        return True

    def flush(self) -> list[str]:
        if self.last in (None, "minus"):
            out = ["minus"] if self.last else []
        else:
            digits = f"{self.sign}{self.total + self.current}"
            out = [f"{digits}.{''.join(self.frac)}" if self.frac else digits]
            out += {"and": ["and"], "point": ["point"]}.get(self.last, [])
        self.__init__()
        return out


def numbers(text: str) -> list[float]:
    """Every number written in the text, sign aside: digits, words, 48k as 48000."""
    return [abs(float(m.group(2))) * (1000 if m.group(3) else 1) for m in NUMBER.finditer(normalise(text))]


class Mention(NamedTuple):
    """A number as an answer gives it."""
    number: float           # as written (48 in "48 kHz")
    signed: bool            # written with an explicit sign
    unit: str | None        # a key of UNITS, "ratio", or None
    rest: str               # the text after it: what a count counts
    bare: bool              # no unit and counting nothing
    context: frozenset      # the words just around it, for `besides`
    span: tuple[int, int]

    @property
    def dimension(self) -> str | None:
        return "ratio" if self.unit == "ratio" else UNITS[self.unit][0] if self.unit else None

    @property
    def value(self) -> float:
        """In the base unit of its dimension."""
        return self.number * (UNITS[self.unit][1] if self.unit and self.unit != "ratio" else 1.0)


def read(text: str) -> list[Mention]:
    """The numbers an answer gives, in order, with their units or what they count."""
    t = normalise(text)
    found = [_ratio(t, m) for m in RATIO.finditer(t)]
    taken = [m.span for m in found]
    for m in NUMBER.finditer(t):
        if not any(a <= m.start() < b for a, b in taken):
            found.append(_number(t, m))
    found.sort(key=lambda m: m.span)
    for i in range(len(found) - 2, -1, -1):   # "44.1 or 48 kHz": the unit carries back
        here, after = found[i], found[i + 1]
        stands_alone = t[here.span[1] - 1] == "k"    # 48k
        if here.bare and not stands_alone and after.unit and after.unit != "ratio" \
                and JOIN.fullmatch(t[here.span[1]:after.span[0]]):
            found[i] = here._replace(unit=after.unit, bare=False)
    return found


def _ratio(t: str, m: re.Match) -> Mention:
    a, b = (float(m.group(1)), float(m.group(2))) if m.group(1) else (float(m.group(3)), 1.0)
    return Mention(a / b if b else math.inf, False, "ratio", "", False, _context(t, *m.span()), m.span())


def _number(t: str, m: re.Match) -> Mention:
    number = float(m.group(2)) * (1000 if m.group(3) else 1) * (-1 if m.group(1) == "-" else 1)
    end, unit, rest = m.end(), None, t[m.end():]
    u = None if m.group(3) else UNIT.match(rest)      # "48k" stands alone
    if u:
        unit, end = _COMPACT[re.sub(r"[\s-]", "", u.group(1))], m.end() + u.end()
        rest = t[end:]
    word = re.match(r"\s*([a-z]+)", rest)
    fraction = rest.startswith("/") or t[:m.start()].endswith("/")    # 4/4 is no value
    counts = re.match(r"-[a-z]", rest) or (word and word.group(1) not in STOPWORDS)  # 24-bit, 4 stems
    bare = bool(m.group(3)) or not (unit or fraction or counts)
    return Mention(number, bool(m.group(1)), unit, "" if unit else rest[:60], bare,
                   _context(t, m.start(), end), (m.start(), end))


def _context(t: str, start: int, end: int) -> frozenset:
    before = re.findall(r"[a-z]+", CLAUSE.split(t[:start])[-1])[-3:]
    after = re.findall(r"[a-z]+", CLAUSE.split(t[end:])[0])[:1]
    return frozenset(before + after)


# Facts and answers --------------------------------------------------------------

class Item(NamedTuple):
    """One thing a right answer must hold."""
    kind: str                       # "quantity", "count" or "ratio"
    value: float                    # in the base unit of `dimension`; a ratio as a / b
    dimension: str | None = None
    nouns: re.Pattern | None = None  # what a count counts; None: anything
    terms: tuple = ()               # a ratio's two terms


def items(fact: Fact) -> list[Item]:
    """The fact's expect items, or what its answer holds when it has none."""
    if not fact.expect:
        return [_item_of(m) for m in read(fact.answer)]
    return [_item(spec) for spec in fact.expect]


def _item(spec: dict) -> Item:
    if not isinstance(spec, dict):
        raise ValueError(f"an expect item must be an object, not {spec!r}")
    if set(spec) == {"value", "unit"}:
        unit = _COMPACT.get(re.sub(r"[\s-]", "", str(spec["unit"]).lower().translate(TYPOGRAPHY)))
        if unit is None:
            raise ValueError(f"unknown unit {spec['unit']!r} (known: {', '.join(UNITS)})")
        dimension, factor = UNITS[unit]
        return Item("quantity", float(spec["value"]) * factor, dimension)
    if set(spec) == {"count", "of"} and spec["of"] and isinstance(spec["of"], list):
        return Item("count", float(spec["count"]), nouns=_nouns(spec["of"]))
    if set(spec) == {"ratio"}:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*", str(spec["ratio"]))
        if m and float(m.group(2)):
            a, b = float(m.group(1)), float(m.group(2))
            return Item("ratio", a / b, "ratio", terms=(a, b))
    raise ValueError(f"an expect item is {{value, unit}}, {{count, of: [nouns]}} or "
                     f"{{ratio: 'a:b'}}, not {json.dumps(spec)}")


def _nouns(phrases: list[str]) -> re.Pattern:
    """'mel bin' -> mel bin, mel bins, mel-bin; 'entry' -> entry, entries."""
    def one(phrase: str) -> str:
        *first, last = phrase.lower().split()
        plural = re.escape(last[:-1]) + "(?:y|ies)" if last.endswith("y") else re.escape(last) + "(?:e?s)?"
        return r"[\s-]+".join([*map(re.escape, first), plural])
    return re.compile(r"[\s-]*(?:%s)\b" % "|".join(one(p) for p in phrases))


def _item_of(m: Mention) -> Item:
    if m.unit == "ratio":
        return Item("ratio", m.value, "ratio", terms=(m.value, 1.0))
    if m.unit:
        return Item("quantity", m.value, m.dimension)
    return Item("count", m.number)


def correct(answer: str, fact: Fact) -> bool:
    """Does the answer give the fact's value, and no rival (the module docstring)?"""
    if not answer.strip() or REFUSAL.search(normalise(answer)):
        return False
    expected = items(fact)
    besides = {w.lower() for w in fact.besides} | {w.lower() + "s" for w in fact.besides}
    given = [m for m in read(answer) if not m.context & besides]
    return all(any(_matches(i, m) for m in given) for i in expected) \
        and not any(_rival(m, expected) for m in given)


def _of_kind(i: Item, m: Mention) -> bool:
    if i.kind == "count":
        return not m.unit and not m.bare and i.nouns is not None and bool(i.nouns.match(m.rest))
    return m.dimension == i.dimension or (m.dimension == "decibel" and i.dimension in DECIBELS)


def _matches(i: Item, m: Mention) -> bool:
    if m.bare:
        factors = [f for d, f in UNITS.values() if d == i.dimension] if i.kind == "quantity" else [1.0]
        return any(_same(i, m.number * f, m.signed) for f in factors)
    if i.kind == "count" and i.nouns is None:
        return not m.unit and _same(i, m.number, m.signed)
    return _of_kind(i, m) and _same(i, m.value, m.signed)


def _same(i: Item, value: float, signed: bool) -> bool:
    unsigned = i.dimension in DECIBELS and not signed
    return math.isclose(value, i.value, rel_tol=1e-9, abs_tol=1e-12) \
        or (unsigned and math.isclose(-value, i.value, rel_tol=1e-9, abs_tol=1e-12))


def _rival(m: Mention, expected: list[Item]) -> bool:
    """A value the answer offers that is no expected one."""
    if m.bare:
        return not any(_matches(i, m) for i in expected)
    kin = [i for i in expected if _of_kind(i, m)]
    return bool(kin) and not any(_matches(i, m) for i in kin)


def value_forms(fact: Fact) -> set[float]:
    """Every number the fact's value may be written as, sign aside: the value in each
    unit of its dimension (120 ms: 120 and 0.12), a count, a ratio's terms other than 1.
    `numbers` reads digits, separators and words, so these are what to look for in a text."""
    forms = set()
    for i in items(fact):
        if i.kind == "quantity":
            forms |= {abs(i.value) / f for d, f in UNITS.values() if d == i.dimension}
        elif i.kind == "ratio":
            forms |= {t for t in i.terms if t != 1}
        else:
            forms.add(abs(i.value))
    return {float(f"{f:.12g}") for f in forms}


def repeat_ngram_ratio(text: str, n: int = 3) -> float | None:
    """Share of word n-grams that repeat an earlier one: 0 fresh, near 1 a loop."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return None if not grams else round(1 - len(set(grams)) / len(grams), 4)


def rounds(recalls: list) -> list[dict]:
    """Group recall records by the turn they followed: score and context per round."""
    by_turn: dict[int, list] = {}
    for r in recalls:
        by_turn.setdefault(r.after_turn, []).append(r)
    out = []
    for turn in sorted(by_turn):
        rs = by_turn[turn]
        ctx = [r.context_tokens for r in rs if r.context_tokens is not None]
        out.append({"after_turn": turn, "probes": len(rs),
                    "recall": _share(rs),
                    "context_tokens": max(ctx) if ctx else None})
    return out


def effective_context(rows: list[dict], threshold: float) -> int | None:
    """The largest context up to which every probe round scores at least `threshold`."""
    best = None
    for r in rows:
        if r["recall"] < threshold:
            break
        best = r["context_tokens"] if r["context_tokens"] is not None else best
    return best


# distance bands in tokens (each up to the next edge), and depth bands (0 = start of the context)
DISTANCE_EDGES = (0, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000)
DEPTH_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8)


def band_of(value: float | None, edges) -> int | None:
    """Index of the band holding value: the last edge at or below it."""
    if value is None:
        return None
    i = 0
    while i + 1 < len(edges) and value >= edges[i + 1]:
        i += 1
    return i


def bands(recalls: list, value_of, edges) -> list[dict]:
    """Recall per band of some distance: [{from, to, probes, recall}] for the bands probed."""
    by_band: dict[int, list] = {}
    for r in recalls:
        b = band_of(value_of(r), edges)
        if b is not None:
            by_band.setdefault(b, []).append(r)
    return [{"from": edges[b], "to": edges[b + 1] if b + 1 < len(edges) else None,
             "probes": len(rs), "recall": _share(rs)} for b, rs in sorted(by_band.items())]


def grid(recalls: list) -> list[dict]:
    """Recall per probe round and depth band: the needle-in-a-haystack picture."""
    cells: dict[tuple[int, int], list] = {}
    for r in recalls:
        b = band_of(r.depth, DEPTH_EDGES)
        if b is not None:
            cells.setdefault((r.after_turn, b), []).append(r)
    ctx = {row["after_turn"]: row["context_tokens"] for row in rounds(recalls)}
    return [{"after_turn": t, "context_tokens": ctx[t], "depth_from": DEPTH_EDGES[b],
             "probes": len(rs), "recall": _share(rs)} for (t, b), rs in sorted(cells.items())]


def _share(rs: list) -> float:
    return round(sum(bool(r.correct) for r in rs) / len(rs), 4)
