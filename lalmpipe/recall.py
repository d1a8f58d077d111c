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
                "questions": ["Quick check from earlier: ...?"],   # other wordings (--probe-forms)
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

import math
import json
import re
from typing import NamedTuple

from .numerals import COMPACT, DECIBELS, NUMBER, RATIO, TYPOGRAPHY, UNIT, UNITS, normalise
from .records import Fact

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
        unit, end = COMPACT[re.sub(r"[\s-]", "", u.group(1))], m.end() + u.end()
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
        unit = COMPACT.get(re.sub(r"[\s-]", "", str(spec["unit"]).lower().translate(TYPOGRAPHY)))
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


def of_kind(i: Item, m: Mention) -> bool:
    if i.kind == "count":
        return not m.unit and not m.bare and i.nouns is not None and bool(i.nouns.match(m.rest))
    return m.dimension == i.dimension or (m.dimension == "decibel" and i.dimension in DECIBELS)


def _matches(i: Item, m: Mention) -> bool:
    if m.bare:
        factors = [f for d, f in UNITS.values() if d == i.dimension] if i.kind == "quantity" else [1.0]
        return any(_same(i, m.number * f, m.signed) for f in factors)
    if i.kind == "count" and i.nouns is None:
        return not m.unit and _same(i, m.number, m.signed)
    return of_kind(i, m) and _same(i, m.value, m.signed)


def _same(i: Item, value: float, signed: bool) -> bool:
    unsigned = i.dimension in DECIBELS and not signed
    return math.isclose(value, i.value, rel_tol=1e-9, abs_tol=1e-12) \
        or (unsigned and math.isclose(-value, i.value, rel_tol=1e-9, abs_tol=1e-12))


def _rival(m: Mention, expected: list[Item]) -> bool:
    """A value the answer offers that is no expected one."""
    if m.bare:
        return not any(_matches(i, m) for i in expected)
    kin = [i for i in expected if of_kind(i, m)]
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


# above this share of repeated word 3-grams an answer loops on itself (a sound one repeats few)
LOOPING_REPEAT = 0.35
# answers to the probes (each asks for a number) of which more than this share give no
# number at all do not answer: a model that forgets still names a number, a wrong one
NO_NUMBER_SHARE = 0.5


def repeat_ngram_ratio(text: str, n: int = 3) -> float | None:
    """Share of word n-grams that repeat an earlier one: 0 fresh, near 1 a loop."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return None if not grams else round(1 - len(set(grams)) / len(grams), 4)
