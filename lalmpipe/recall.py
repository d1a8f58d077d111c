"""Does the model still remember? Planted facts, their scoring, and the
effective context: pure functions, no clock, no network.

A fact is stated in an early prompt (`stated_in`) and later asked again in a
forked request that is not added to the conversation. An answer is right when
it holds every number of the expected answer, after normalising case, spacing,
thousands separators, unicode minus signs and numbers written as words.
"""
from __future__ import annotations

import json
import re

import msgspec

from .bundled import bundled, open_text
from .jsonl import InputError
from .records import Fact

DEFAULT_FACTS = bundled("lalm_facts.json")

UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
        if w != "_"}
SCALES = {"hundred": 100, "thousand": 1000}
NUMBER_WORDS = re.compile(r"\b(?:(?:%s|and|point)[\s-]*)+\b" % "|".join(
    list(UNITS) + list(TENS) + list(SCALES) + ["minus"]), re.IGNORECASE)


def load_facts(path=DEFAULT_FACTS) -> dict:
    """Load and check a facts file: {rule: {text, check}, facts: [{id, stated_in, question, answer}]}."""
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
        if not numbers(f["answer"]):
            raise InputError(f"{path}: fact {f['id']}: the answer must hold a number to check")
    rule = doc.get("rule")
    if rule is not None:
        try:
            re.compile(rule["check"])
        except (KeyError, TypeError, re.error) as e:
            raise InputError(f"{path}: rule needs 'text' and a regular expression 'check' ({e})") from None
    try:
        return {"rule": rule, "facts": [msgspec.convert(f, Fact) for f in facts]}
    except msgspec.ValidationError as e:
        raise InputError(f"{path}: a fact: {e}") from None


def words_to_digits(text: str) -> str:
    """Write numbers given in words as digits: 'ninety-two' -> '92'."""
    return NUMBER_WORDS.sub(lambda m: _spell(m.group(0)), text)


def _spell(phrase: str) -> str:
    words = [w for w in re.split(r"[\s-]+", phrase.lower()) if w and w != "and"]
    if not any(w in UNITS or w in TENS for w in words):
        return phrase
    sign = "-" if words and words[0] == "minus" else ""
    words = words[1:] if sign else words
    whole, frac = (words[:words.index("point")], words[words.index("point") + 1:]) \
        if "point" in words else (words, [])
    total, current = 0, 0
    for w in whole:
        if w in UNITS:
            current += UNITS[w]
        elif w in TENS:
            current += TENS[w]
        elif w == "hundred":
            current = max(current, 1) * 100
        elif w == "thousand":
            total, current = total + max(current, 1) * 1000, 0
    digits = "".join(str(UNITS[w]) for w in frac if w in UNITS)
    return f" {sign}{total + current}{'.' + digits if digits else ''} "


def normalise(text: str) -> str:
    text = text.lower().replace("\u2212", "-").replace("\u2013", "-")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return re.sub(r"\s+", " ", words_to_digits(text)).strip()


def numbers(text: str) -> list[float]:
    return [abs(float(n)) for n in re.findall(r"-?\d+(?:\.\d+)?", normalise(text))]


def correct(answer: str, expected: str) -> bool:
    """Every number of the expected answer appears in the answer (sign aside)."""
    got = numbers(answer)
    return all(any(abs(g - e) < 1e-9 for g in got) for e in numbers(expected))


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
                    "recall": round(sum(bool(r.correct) for r in rs) / len(rs), 4),
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
