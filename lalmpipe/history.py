"""A fixed history from a recording, and the turns that are sent (lalm-chat
--history, --at, --every).

With --history, the assistant messages of the conversation are those of an
earlier recording (any model, any server), matched by prompt id: every model
measured over it is sent the same messages at every turn. With --at or
--every only the chosen prompts are sent; the others enter the history from
the recording without a request. A turn record says what entered the history
(its `history` and `skipped` fields), so lalm-metrics and --resume rebuild
what was sent from the recording alone.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterator

from .errors import InputError, UsageError
from .facts import DEFAULT_FACTS, load_facts
from .jsonl import recording
from .prompts import DEFAULT_FILE
from .prompts import load as load_prompts
from .reference import NAME as REFERENCE_NAME
from .reference import read_reference
from .tokens import count
from .reasoning import read_stream
from .render.columns import plural
from .records import STATUS_OK, Exchange, HistorySource, Prompt, Turn


def own_answer(turn: Turn, view, keep_reasoning: bool) -> str | None:
    """The answer a turn put into the history after its prompt: the
    recording's with --history, else its own stream's when it succeeded.
    A repeat (--repeat, always over a --history) put in only the answer it
    names: the last one sent names it, the others none."""
    if turn.history is not None or turn.repeat is not None:
        return turn.history
    return view.history_text(keep_reasoning) if turn.status == STATUS_OK else None


def exchanges(turn: Turn, keep_reasoning: bool) -> list[Exchange]:
    """What entered the history with a turn record, in order: the prompts
    skipped before it, then its own prompt and answer (if any entered)."""
    own = own_answer(turn, read_stream(turn.chunks), keep_reasoning)
    mine = [] if own is None else [Exchange(turn=turn.turn, prompt=turn.prompt, answer=own)]
    return list(turn.skipped) + mine


def digest(answers: dict[int, tuple[str, str]]) -> str:
    """The sha256 of a history's prompts and answers, in prompt order: two runs
    with the same digest were sent the same messages."""
    items = [[pid, text, answer] for pid, (text, answer) in sorted(answers.items())]
    return hashlib.sha256(json.dumps(items, ensure_ascii=False, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


class History:
    """The answers of a recording, by prompt id, with the prompt each answered."""

    def __init__(self, source: HistorySource, answers: dict[int, tuple[str, str]]):
        self.source = source
        self.answers = answers

    def answer(self, prompt_id: int) -> str:
        return self.answers[prompt_id][1]

    def check(self, prompts: list[Prompt]) -> None:
        """Refuse, naming the prompt, a recording without an answer to one of
        the prompts, or whose prompt text differs from the one to be sent."""
        for p in prompts:
            if p.id not in self.answers:
                raise UsageError(f"--history {self.source.path}: no answer to prompt {p.id} "
                                 f"(the recording answered {plural(self.source.answers, 'prompt')})")
            if self.answers[p.id][0] != p.text:
                raise UsageError(f"--history {self.source.path}: prompt {p.id} differs from the "
                                 "one the recording answered")


def load(path: str) -> History:
    """Read a lalm-chat recording's history: for each prompt id, the last answer
    that entered its history (a resumed run's redone turn counts once); or, for
    `reference`, the reference conversation that ships with lalmpipe."""
    if path == REFERENCE_NAME:
        return reference_history()
    answers: dict[int, tuple[str, str]] = {}
    try:
        fp = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    with fp:
        run, turns = recording(path, fp, "a --history recording",
                               passes={"prompt", "probe", "metrics", "recall"})
    for turn in turns:      # (none without a run record)
        for ex in exchanges(turn, run.settings.keep_reasoning if run else False):
            if ex.prompt.id is not None:    # an answer without a prompt id answers no prompt sent
                answers[ex.prompt.id] = (ex.prompt.text, ex.answer)
    if run is None or not answers:
        raise InputError(f"{path}: no answered turns: --history takes a lalm-chat recording")
    return History(HistorySource(path=path, run_id=run.run_id, model=run.model, sha256=digest(answers),
                                 answers=len(answers)), answers)


def reference_history() -> History:
    """The shipped reference conversation (lalmpipe.reference), as a history."""
    head, records = read_reference()
    texts = {p.id: p.text for p in load_prompts(DEFAULT_FILE)}
    answers = {pid: (texts[pid], r["answer"]) for pid, r in records.items() if pid in texts}
    return History(HistorySource(path=REFERENCE_NAME, run_id=REFERENCE_NAME, model=head.get("model"),
                                 sha256=digest(answers), answers=len(answers)), answers)


def requests(history: History, prompts: list[Prompt], extra_tokens: int = 0) -> Iterator[tuple[Prompt, int, int]]:
    """Each prompt with the client's cl100k count of what its request carries before it (the
    history's exchanges so far and `extra_tokens`: the system message, the standing rule) and
    of the whole request."""
    before = extra_tokens
    for p in prompts:
        request = before + (count(p.text) or 0)
        yield p, before, request
        before = request + (count(history.answer(p.id)) or 0) if p.id in history.answers else request


def fact_depths() -> list[tuple[str, int, int]]:
    """Where each planted fact stands in the reference conversation: (fact, the prompt that
    states it, the cl100k token position at which that prompt starts)."""
    starts = {p.id: before for p, before, _ in requests(reference_history(), load_prompts(DEFAULT_FILE))}
    return [(f.id, f.stated_in, starts[f.stated_in]) for f in load_facts(DEFAULT_FACTS)["facts"]]


def depth_table() -> str:
    """The facts' depths as a Markdown table (the README's)."""
    rows = ["| fact | stated in prompt | at token |", "|---|---|---|"]
    return "\n".join(rows + [f"| {f} | {p} | {t:,} |" for f, p, t in fact_depths()])


def depth_turns(history: History, prompts: list[Prompt], targets: list[int], extra_tokens: int = 0) -> dict[int, int]:
    """For each depth in tokens, the first prompt whose request reaches it: the client's
    cl100k count of the history before it, its own text and `extra_tokens` (the system
    message, the standing rule). Returns prompt id -> depth; a depth deeper than the last
    request is refused, naming how deep the history goes."""
    chosen: dict[int, int] = {}
    deepest = 0
    pending = sorted(set(targets))
    for p, _, request in requests(history, prompts, extra_tokens):
        deepest = request
        while pending and request >= pending[0]:
            chosen.setdefault(p.id, pending.pop(0))
        if not pending:
            return chosen
    raise UsageError(f"--depths {pending[0]:,}: the history ({history.source.path}) reaches {deepest:,} tokens "
                     f"at its last prompt, the deepest depth it gives")


def open_history(path: str | None, used: HistorySource | None, resuming: bool) -> History | None:
    """The history to send: from --history, or, on --resume, the one the run
    used, which must not have changed."""
    if resuming and used is None and path:
        raise UsageError("--resume: the run was made without --history; resume it without")
    path = path or (used.path if used else None)
    if path is None:
        return None
    history = load(path)
    if used is not None and history.source.sha256 != used.sha256:
        raise UsageError(f"--resume: {path} is not the history the run used "
                         f"(sha256 {history.source.sha256[:12]}, not {used.sha256[:12]})")
    return history


class Plan:
    """Which prompts are sent: all of them, or those --at names and every
    K-th one (--every); after the last one sent, none is used."""

    def __init__(self, prompts: list[Prompt], at: list[int] | None, every: int | None):
        self.selective = bool(at or every)
        ids = [p.id for p in prompts]
        missing = sorted(set(at or ()) - set(ids))
        if missing:
            raise UsageError(f"--at: prompt {missing[0]} is not among the prompts read")
        sent = [pid for i, pid in enumerate(ids, 1)
                if not self.selective or pid in (at or ()) or (every and i % every == 0)]
        if every and not sent:      # (every prompt --at names is sent)
            raise UsageError(f"--every {every}: fewer than {plural(every, 'prompt')} read, none would be sent")
        self.rank = {pid: k for k, pid in enumerate(sent, 1)}    # the k-th prompt sent
        self.last = sent[-1] if sent else None

    def sends(self, prompt_id: int) -> bool:
        return prompt_id in self.rank

    def used(self, prompts: list[Prompt]) -> list[Prompt]:
        """The prompts up to the last one sent."""
        end = next((i for i, p in enumerate(prompts) if p.id == self.last), len(prompts) - 1)
        return prompts[:end + 1]
