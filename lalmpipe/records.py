"""Define the record kinds that stages exchange, in one place.

Field names are a public contract (README): add fields freely, never rename
one or change its meaning without bumping SCHEMA_VERSION. Records are msgspec
Structs: checked once when read, then passed on as typed objects. A stage that
forwards a record untouched writes the line it read, unknown fields and all.

Schema versions: 2 split the run record's `params` (what each request
carried) from `settings` (the client's own: retries, timeouts, probes, ...);
version 1 recordings are still read.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar, get_args

import msgspec

from .vocab import CountSource, ErrorKind, Status

SCHEMA_VERSION = 2

Tier = Literal["foundations", "intermediate", "advanced", "expert", "obscure", "ultra-deep"]
TIERS: tuple[str, ...] = get_args(Tier)

# the vocabularies (lalmpipe.vocab), under the names the stages have long used
STATUS_OK, STATUS_ERROR, STATUS_INTERRUPTED = Status.OK, Status.ERROR, Status.INTERRUPTED
ERROR_KINDS = tuple(k.value for k in ErrorKind)

# how a request was made a full prefill (lalm-chat --cold): llama.cpp's own switch,
# or a unique line at the very start of its first message
ColdWay = Literal["cache_prompt", "marker"]
COLD_CACHE_PROMPT: ColdWay = "cache_prompt"
COLD_MARKER: ColdWay = "marker"


class RecordError(ValueError):
    """A record that cannot be read: wrong shape, missing field, newer schema."""


class Struct(msgspec.Struct, kw_only=True):
    """A typed part of a record."""

    def to_dict(self) -> dict:
        return msgspec.to_builtins(self)


R = TypeVar("R", bound="Record")


class Record(Struct):
    KIND: ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[R], d: dict) -> R:
        """Build a record from a decoded line, checking every field's type."""
        check_version(d)
        try:
            return msgspec.convert(d, cls)
        except msgspec.ValidationError as e:
            raise RecordError(f"{cls.KIND} record: {_plain(str(e))}") from None

    def to_dict(self) -> dict:
        return {"kind": self.KIND, "v": SCHEMA_VERSION, **msgspec.to_builtins(self)}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return cls.__struct_fields__


def _plain(message: str) -> str:
    """msgspec's message in the project's words: `$.prompt` -> `prompt`."""
    message = message.replace("Object missing required field", "missing field")
    message = message.replace(" - at `$.", " at `").replace(" - at `$[", " at `[")
    return message[:1].lower() + message[1:]


class Error(Struct):
    """Why a request failed: its kind, a message, the server's body."""
    kind: ErrorKind
    message: str
    body: str | None = None

    def __post_init__(self):
        try:
            self.kind = ErrorKind(self.kind)
        except ValueError:
            raise ValueError(f"unknown error kind {self.kind!r} (one of {', '.join(ERROR_KINDS)})") from None


def _check_chunks(chunks: list) -> None:
    for i, c in enumerate(chunks):
        if not (type(c) is list and 2 <= len(c) <= 3 and type(c[1]) is str
                and type(c[0]) in (float, int) and (len(c) == 2 or type(c[2]) is str)):
            raise ValueError(f"chunk {i + 1} is not [t_s, data] or [t_s, data, event]")


class Prompt(Record):
    KIND: ClassVar[str] = "prompt"
    id: int
    tier: Tier
    text: str

    def ref(self) -> "PromptRef":
        return PromptRef(id=self.id, tier=self.tier, text=self.text)


class PromptRef(Struct):
    """The prompt a turn answered, as the turn record carries it."""
    id: int | None = None
    tier: str | None = None
    text: str = ""


class Exchange(Struct):
    """A prompt that entered the history without being sent, and the answer that followed it."""
    turn: int                   # its place in the conversation: the turn number it took
    prompt: PromptRef
    answer: str


class HistorySource(Struct):
    """The recording a run's history answers came from (lalm-chat --history)."""
    path: str
    run_id: str
    sha256: str                 # of its prompts and answers (lalmpipe.history.digest)
    answers: int                # prompts it holds an answer for
    model: str | None = None


class Fact(Struct):
    """A planted fact; `expect` and `besides` are read by lalmpipe.recall."""
    id: str
    stated_in: int
    question: str
    answer: str
    expect: list[dict] = []
    besides: list[str] = []
    questions: list[str] = []   # other wordings of the question, asking the same value

    @property
    def wordings(self) -> list[str]:
        """Every wording of its question: form 0 is `question`, then `questions` in order."""
        return [self.question, *self.questions]


class Settings(Struct):
    """The client's own settings of a run (never sent to the server); the one list of them.

    A resumed run goes on with the settings its run record holds.
    """
    system: str | None = None
    keep_reasoning: bool = False
    retries: int = 2
    timeout: float | None = None
    stall_timeout: float = 300.0
    on_error: Literal["stop", "continue"] = "stop"
    probe_every: int | None = None
    probe_max_tokens: int = 64
    rule: dict | None = None            # {text, check}
    facts: list[Fact] | None = None     # the facts probed
    history: HistorySource | None = None  # the answers in the history come from this recording
    at: list[int] | None = None         # only these prompt ids are sent; the others enter the history
    every: int | None = None            # only every K-th prompt is sent
    cold: bool = False                  # every turn sent is a full prefill
    # a run recorded before these asked each fact in one wording, and sent each turn once
    probe_forms: int = 1                # each fact asked in its first N wordings
    repeat: int = 1                     # each chosen turn sent N times (--at, --every)
    depths: list[tuple[int, int]] | None = None   # --depths: (prompt id, the depth in tokens it was chosen for)

    @classmethod
    def from_args(cls, args) -> "Settings":
        """The settings the command's flags give (the rule, the facts and the history come from files)."""
        return cls(**{n: getattr(args, n) for n in cls.__struct_fields__
                      if n not in ("rule", "facts", "history") and hasattr(args, n)})

    @property
    def rule_text(self) -> str | None:
        return (self.rule or {}).get("text")


DEFAULT_SETTINGS = Settings()


class Server(Struct):
    """What the server said about itself before the run (serverinfo.preflight)."""
    models: list | None = None
    context_window: int | None = None      # tokens, where the server tells
    context_source: str | None = None      # where the window was read
    software: str | None = None
    # as each server reports them, unchecked
    build: Any = None
    total_slots: Any = None
    max_context_length: Any = None
    trained_context: Any = None
    # how the project's own server was started (lalmpipe.localserver run): engine, model file and
    # its sha256, the arguments that matter, the window; None for a server started elsewhere
    config: dict | None = None


class Run(Record):
    KIND: ClassVar[str] = "run"
    run_id: str
    started_at: str
    tool: dict
    base_url: str
    model: str | None
    params: dict = {}           # what each request carried besides model, messages and stream
    settings: Settings = msgspec.field(default_factory=Settings)
    server: Server = msgspec.field(default_factory=Server)
    # the model the server serves under `model`: as it lists it, or as the first
    # answer's stream names it where that differs or the server lists none
    served_model: str | None = None
    label: str | None = None            # the run's name in a comparison (lalm-chat --label, make sweep)

    @classmethod
    def from_dict(cls, d: dict) -> "Run":
        if d.get("v") == 1 and isinstance(d.get("params"), dict):
            d = _run_from_v1(d)
        return super().from_dict(d)


def _run_from_v1(d: dict) -> dict:
    """Version 1 kept the client's settings inside `params`."""
    params = dict(d["params"])
    settings = {n: params.pop(n) for n in Settings.__struct_fields__ if n in params}
    settings.pop("facts", None)     # ids only: the probe records carry the facts
    return {**d, "params": params, "settings": settings}


class Turn(Record):
    KIND: ClassVar[str] = "turn"
    run_id: str
    turn: int
    prompt: PromptRef
    sent_at: str
    status: Status
    http_status: int | None = None
    error: Error | None = None
    attempts: int = 1
    connection: str | None = None     # "new" or "reused": the one the answer came on
    chunks: list = []
    content: str = ""
    reasoning: str = ""
    cold: ColdWay | None = None       # how it was made a full prefill (--cold)
    marker: str | None = None         # the text put at the start of its first message (cold: marker)
    history: str | None = None        # the answer that entered the history in place of its own (--history)
    skipped: list[Exchange] = []      # the prompts that entered the history unsent just before it
    # where it was sent when not to the run record's base_url: a resumed run gone on
    # against the same model at a new URL (a restarted server on another port)
    base_url: str | None = None
    # which sending of its prompt it was (--repeat): 1..N, the last one entering the history
    repeat: int | None = None

    def __post_init__(self):
        _check_chunks(self.chunks)


class Metrics(Record):
    KIND: ClassVar[str] = "metrics"
    run_id: str
    turn: int
    prompt_id: int | None = None
    tier: str | None = None
    status: Status = STATUS_OK
    error_kind: ErrorKind | None = None
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
    tokens_source: CountSource | None = None
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
    prompt_tokens_source: CountSource | None = None
    context_tokens_est: int | None = None
    context_tokens_source: CountSource | None = None    # the server's, or the client's cl100k estimate
    overflow_tokens: int | None = None          # the request's size by the server's count, as it refused it
    repeat: int | None = None                   # its turn's (--repeat)


class Probe(Record):
    """A forked question about a planted fact, sent after a turn and not kept in the history."""
    KIND: ClassVar[str] = "probe"
    run_id: str
    after_turn: int
    fact: Fact
    sent_at: str
    status: Status
    http_status: int | None = None
    error: Error | None = None
    connection: str | None = None
    chunks: list = []
    content: str = ""
    form: int = 0                   # the wording asked: 0 the fact's `question`, k its `questions`[k - 1]
    question: str | None = None     # the text sent (None in older recordings: the `question`)

    def __post_init__(self):
        _check_chunks(self.chunks)

    @property
    def asked(self) -> str:
        """The question the probe sent."""
        return self.fact.question if self.question is None else self.question


class Recall(Record):
    """A probe scored by lalm-metrics."""
    KIND: ClassVar[str] = "recall"
    run_id: str
    after_turn: int
    fact_id: str
    expected: str
    answer: str
    correct: bool
    status: Status = STATUS_OK
    context_tokens: int | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    context_tokens_est: int | None = None
    # where the fact stood when it was asked (client counts; depth 0 = start, 1 = end)
    stated_turn: int | None = None
    turns_since_stated: int | None = None
    tokens_since_stated: int | None = None
    depth: float | None = None
    form: int = 0                   # its probe's
    question: str | None = None


KINDS: dict[str, type[Record]] = {cls.KIND: cls for cls in (Prompt, Run, Turn, Metrics, Probe, Recall)}


def identity(record: Record) -> tuple | None:
    """What makes a record one of a kind: a run by its id, a turn (or its metrics) by its
    run and number, a probe (or its recall) by its run, turn, fact and form; None for a prompt."""
    if isinstance(record, Run):
        return ("run", record.run_id)
    if isinstance(record, (Turn, Metrics)):
        return (record.KIND, record.run_id, record.turn)
    if isinstance(record, (Probe, Recall)):
        fact = record.fact.id if isinstance(record, Probe) else record.fact_id
        return (record.KIND, record.run_id, record.after_turn, fact, record.form)
    return None


def check_version(d: dict) -> None:
    """Reject a record this version cannot read: no version, or a newer one."""
    v = d.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise RecordError(f"{d.get('kind')} record without an integer schema version 'v'")
    if v > SCHEMA_VERSION:
        raise RecordError(f"schema version {v} is newer than this lalmpipe reads "
                          f"({SCHEMA_VERSION}); upgrade lalmpipe")


def as_record(obj: Any) -> dict:
    """A record object or an already decoded line, as the dict to write."""
    return obj.to_dict() if isinstance(obj, Record) else obj
