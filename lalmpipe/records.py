"""Define the record kinds that stages exchange, in one place.

Field names are a public contract (DESIGN.md): add fields freely, never rename
one or change its meaning without bumping SCHEMA_VERSION. Unknown fields are
kept in ``extra`` and written back untouched.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from typing import Any, ClassVar

SCHEMA_VERSION = 1

TIERS = ("foundations", "intermediate", "advanced", "expert", "obscure", "ultra-deep")

STATUS_OK, STATUS_ERROR, STATUS_INTERRUPTED = "ok", "error", "interrupted"

ERROR_KINDS = ("context_overflow", "http", "connection", "timeout", "stream",
               "empty", "interrupted")


class RecordError(ValueError):
    """A record that cannot be read: wrong shape, missing field, newer schema."""


@dataclass(kw_only=True)
class Record:
    KIND: ClassVar[str] = ""
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        """Build a record, checking that each known field has its type."""
        check_version(d)
        types = _field_types(cls)
        missing = [n for n, (_, required) in types.items() if required and n not in d]
        if missing:
            raise RecordError(f"{cls.KIND} record without {', '.join(missing)}")
        known = {}
        for n, (allowed, _) in types.items():
            if n in d:
                v = d[n]
                if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
                    raise RecordError(f"{cls.KIND} record: {n} is {_json_type(v)}, not "
                                      f"{' or '.join(_json_type(t()) for t in allowed)}")
                known[n] = v
        extra = {k: v for k, v in d.items() if k not in types and k not in ("kind", "v")}
        record = cls(**known, extra=extra)
        record.check()
        return record

    def check(self) -> None:
        """Check what a field's type alone cannot say."""

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"kind": self.KIND, "v": SCHEMA_VERSION}
        for n in self._names():
            out[n] = getattr(self, n)
        out.update(self.extra)
        return out

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(_field_types(cls))


TYPE_NAMES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
              "dict": (dict,), "list": (list,), "None": (type(None),)}


@lru_cache(maxsize=None)
def _field_types(cls) -> dict[str, tuple[tuple[type, ...], bool]]:
    """Field name -> (allowed Python types, required), read from the annotations."""
    out = {}
    for f in fields(cls):
        if f.name == "extra":
            continue
        allowed = tuple(t for part in str(f.type).split("|") for t in TYPE_NAMES[part.strip()])
        out[f.name] = (allowed, f.default is MISSING and f.default_factory is MISSING)
    return out


def _json_type(v) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            dict: "an object", list: "a list", type(None): "null"}.get(type(v), type(v).__name__)


def _check_chunks(kind: str, chunks: list) -> None:
    for i, c in enumerate(chunks):
        if not (isinstance(c, list) and 2 <= len(c) <= 3 and isinstance(c[0], (int, float))
                and all(isinstance(x, str) for x in c[1:])):
            raise RecordError(f"{kind} record: chunk {i + 1} is not [t_s, data] or [t_s, data, event]")


@dataclass(kw_only=True)
class Prompt(Record):
    KIND: ClassVar[str] = "prompt"
    id: int
    tier: str
    text: str


@dataclass(kw_only=True)
class Run(Record):
    KIND: ClassVar[str] = "run"
    run_id: str
    started_at: str
    tool: dict
    base_url: str
    model: str | None
    params: dict = field(default_factory=dict)
    server: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class Turn(Record):
    KIND: ClassVar[str] = "turn"
    run_id: str
    turn: int
    prompt: dict
    sent_at: str
    status: str
    http_status: int | None = None
    error: dict | None = None
    attempts: int = 1
    connection: str | None = None     # "new" or "reused": the one the answer came on
    chunks: list = field(default_factory=list)
    content: str = ""
    reasoning: str = ""

    def check(self) -> None:
        _check_chunks(self.KIND, self.chunks)


@dataclass(kw_only=True)
class Metrics(Record):
    KIND: ClassVar[str] = "metrics"
    run_id: str
    turn: int
    prompt_id: int | None = None
    tier: str | None = None
    status: str = STATUS_OK
    error_kind: str | None = None
    finish_reason: str | None = None
    ttft_s: float | None = None
    ttft_content_s: float | None = None
    e2e_s: float | None = None
    decode_tps: float | None = None
    itl_p50_s: float | None = None
    itl_p95_s: float | None = None
    itl_max_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    content_tokens: int | None = None
    tokens_source: str | None = None
    has_reasoning: bool = False
    reasoning_s: float | None = None
    cached_tokens: int | None = None
    prefill_tps: float | None = None
    context_tokens: int | None = None
    conversation_tokens: int | None = None
    truncated: bool = False
    server_timings: dict | None = None
    repeat_3gram_ratio: float | None = None
    empty_answer: bool = False
    hit_max_tokens: bool = False
    rule_kept: bool | None = None


@dataclass(kw_only=True)
class Probe(Record):
    """A forked question about a planted fact, sent after a turn and not kept in the history."""
    KIND: ClassVar[str] = "probe"
    run_id: str
    after_turn: int
    fact: dict                       # {id, question, answer, stated_in}
    sent_at: str
    status: str
    http_status: int | None = None
    error: dict | None = None
    connection: str | None = None
    chunks: list = field(default_factory=list)
    content: str = ""

    def check(self) -> None:
        _check_chunks(self.KIND, self.chunks)


@dataclass(kw_only=True)
class Recall(Record):
    """A probe scored by lalm-metrics."""
    KIND: ClassVar[str] = "recall"
    run_id: str
    after_turn: int
    fact_id: str
    expected: str
    answer: str
    correct: bool
    status: str = STATUS_OK
    context_tokens: int | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None


KINDS = {cls.KIND: cls for cls in (Prompt, Run, Turn, Metrics, Probe, Recall)}


def check_version(d: dict) -> None:
    """Reject a record this version cannot read: no version, or a newer one."""
    v = d.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise RecordError(f"{d.get('kind')} record without an integer schema version 'v'")
    if v > SCHEMA_VERSION:
        raise RecordError(f"schema version {v} is newer than this lalmpipe reads "
                          f"({SCHEMA_VERSION}); upgrade lalmpipe")


def new_error(kind: str, message: str, body: str | None = None) -> dict:
    """Build the `error` object of a failed turn."""
    return {"kind": kind, "message": message, "body": body}
