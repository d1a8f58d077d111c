"""Load the planted facts and the standing rule (the bundled lalm_facts.json, or --facts),
checking each fact against its own scoring (lalmpipe.recall)."""
from __future__ import annotations

import json
import re

import msgspec

from .bundled import bundled, open_text
from .errors import InputError
from .recall import correct, items
from .records import Fact

DEFAULT_FACTS = bundled("lalm_facts.json")


def load_facts(path=DEFAULT_FACTS) -> dict:
    """Load and check a facts file: {rule: {text, check}, facts: [Fact]} (lalmpipe.recall's
    docstring); a fact's `questions` are other wordings of its `question`."""
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
    blank = next((k for k, q in enumerate(fact.questions) if not q.strip()), None)
    if blank is not None:
        raise InputError(f"{path}: fact {fact.id}: its questions[{blank}] is empty")
    try:
        expected = items(fact)
    except ValueError as e:
        raise InputError(f"{path}: fact {fact.id}: {e}") from None
    if not expected:
        raise InputError(f"{path}: fact {fact.id}: the answer must hold a number to check")
    if not correct(fact.answer, fact):
        raise InputError(f"{path}: fact {fact.id}: its answer {fact.answer!r} does not meet its expect")
