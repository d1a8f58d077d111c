"""The conversation lalm-chat holds: what each request carries, each turn's
outcome, retries, the stop policy, the forked recall probes and interruptions."""
from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime, timezone
from typing import Iterable, Iterator

from . import outcome
from .reasoning import read_stream
from .records import (COLD_CACHE_PROMPT, COLD_MARKER, STATUS_INTERRUPTED, STATUS_OK, ColdWay, Exchange, Fact,
                      Probe, Prompt, Run, Turn)
from .signals import on_stop
from .transport import Attempt
from .vocab import ErrorKind


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_params(args) -> dict:
    """The generation parameters the flags ask every request to carry (never the key)."""
    params = {"temperature": args.temperature, "max_tokens": args.max_tokens}
    if args.reasoning_effort:
        params["reasoning_effort"] = args.reasoning_effort
    params["stream_options"] = {"include_usage": True}
    params.update(args.extra_body or {})
    return params


def cold_way(software: str | None) -> ColdWay:
    """How to make a request a full prefill: llama.cpp's `cache_prompt: false`;
    elsewhere a line at the very start that no cached prefix can match."""
    return COLD_CACHE_PROMPT if software == "llama.cpp" else COLD_MARKER


def cold_marker(run_id: str, turn: int) -> str:
    """A line unique to one request of one run."""
    return f"[{run_id}/{turn}]\n"


def streamed_model(chunks: list) -> str | None:
    """The model the first chunk that names one says answered."""
    for chunk in chunks:
        if '"model"' not in chunk[1]:
            continue
        try:
            named = json.loads(chunk[1]).get("model")
        except (ValueError, AttributeError):
            continue
        if isinstance(named, str) and named:
            return named
    return None


class Conversation:
    """The messages sent so far, and what a finished turn adds to them."""

    def __init__(self, system: str | None, keep_reasoning: bool, rule: str | None = None):
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.keep_reasoning = keep_reasoning
        self.rule = rule
        self.answered: set[int] = set()

    @classmethod
    def of(cls, run: Run) -> "Conversation":
        s = run.settings
        return cls(s.system, s.keep_reasoning, s.rule_text)

    def _user(self, text: str) -> dict:
        # a standing rule is given once, with the first question
        first = not self.answered
        return {"role": "user", "content": f"{self.rule}\n\n{text}" if self.rule and first else text}

    def request(self, text: str, marker: str | None = None) -> list[dict]:
        """The messages to send; a marker goes at the very start of the first one."""
        messages = self.messages + [self._user(text)]
        if marker:
            messages[0] = {**messages[0], "content": marker + messages[0]["content"]}
        return messages

    def add(self, prompt_id: int, text: str, view) -> None:
        """Append the question and the answer its stream gave, as a client would,
        so the prefix cache is measured as a real client meets it."""
        self.add_answer(prompt_id, text, view.history_text(self.keep_reasoning))

    def add_answer(self, prompt_id: int, text: str, answer: str) -> None:
        self.messages += [self._user(text), {"role": "assistant", "content": answer}]
        self.answered.add(prompt_id)


class Interrupts:
    """SIGINT and SIGTERM as a flag, checked at safe points.

    While the run waits (on the network, in a retry back-off) a signal breaks
    the wait at once, as KeyboardInterrupt; anywhere else, writing a record
    above all, it only raises the flag, and the run stops at the next safe
    point with every record whole.
    """

    def __init__(self):
        self.requested = False
        self._waiting = 0

    def _handler(self, signum, frame) -> None:
        self.requested = True
        if self._waiting:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def waiting(self):
        """A stretch where a signal may break in."""
        self.check()
        self._waiting += 1
        try:
            yield
        finally:
            self._waiting -= 1

    def check(self) -> None:
        """A safe point: stop here if a signal came."""
        if self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self):
        """Catch SIGINT and SIGTERM while the run lasts (main thread only)."""
        with on_stop(self._handler):
            yield self


INTERRUPTED = (ErrorKind.INTERRUPTED, "interrupted by the user")


class Chat:
    """Run the conversation: one turn per prompt, with retries and the stop policy.

    Every setting comes from the run record, a resumed run's included.
    """

    def __init__(self, transport, run: Run, conversation: Conversation, progress,
                 interrupts: Interrupts, facts: Iterable[Fact] = (), history=None, plan=None):
        self.transport, self.run = transport, run
        self.settings = run.settings
        self.facts = list(facts)
        self.conversation = conversation
        self.progress = progress
        self.interrupts = interrupts
        self.params = {**run.params, "stream": True}
        self.history = history      # lalmpipe.history.History: the answers the history gets
        self.plan = plan            # lalmpipe.history.Plan: the prompts sent
        self._model_warned = False

    def turns(self, prompts: Iterable[Prompt], first_turn: int = 1) -> Iterator[Turn | Probe]:
        n, every, skipped = first_turn, self.settings.probe_every, []
        # with chosen turns (--at, --every), each is sent --repeat times; only the last enters the history
        repeats = self.settings.repeat if self.plan and self.plan.selective else 1
        for prompt in prompts:
            self.interrupts.check()
            if self.plan and not self.plan.sends(prompt.id):
                skipped.append(self.enter_unsent(n, prompt))
                n += 1
                continue
            for k in range(1, repeats + 1):
                record = self.one_turn(n, prompt, skipped, repeat=k if repeats > 1 else None,
                                       enters=k == repeats)
                skipped = []
                yield record
                if record.status == STATUS_INTERRUPTED:
                    raise KeyboardInterrupt
                if record.status != STATUS_OK and self.settings.on_error == "stop":
                    error = record.error
                    why = f"{error.kind}: {error.message}" if error else record.status
                    self.progress.say(f"stopping at turn {n}: {why} (--on-error continue goes on)")
                    return
                n += 1
            if record.status == STATUS_OK and every and self._probes_due(n - 1, prompt, every):
                yield from self.probe_round(n - 1)

    def _probes_due(self, n: int, prompt: Prompt, every: int) -> bool:
        # with chosen turns, after every K-th of those sent; else after every K-th turn
        k = self.plan.rank[prompt.id] if self.plan and self.plan.selective else n
        return k % every == 0

    def enter_unsent(self, n: int, prompt: Prompt) -> Exchange:
        """Put a prompt and its recorded answer into the history without sending them."""
        answer = self.history.answer(prompt.id)
        self.conversation.add_answer(prompt.id, prompt.text, answer)
        return Exchange(turn=n, prompt=prompt.ref(), answer=answer)

    def one_turn(self, n: int, prompt: Prompt, skipped: Iterable[Exchange] = (), repeat: int | None = None,
                 enters: bool = True) -> Turn:
        """Send a prompt over the history; unless it is a repeat before the last (`enters`
        false), its exchange then enters the history."""
        cold = cold_way(self.run.server.software) if self.settings.cold else None
        marker = cold_marker(self.run.run_id, n) if cold == COLD_MARKER else None
        body = {"model": self.run.model, "messages": self.conversation.request(prompt.text, marker),
                **self.params}
        if cold == COLD_CACHE_PROMPT:
            body["cache_prompt"] = False
        sent_at = now_iso()
        att, attempts = self._send(n, prompt, body)
        self._confirm_model(n, att.chunks)
        view = read_stream(att.chunks)
        status, error = outcome.classify(att.http_status, att.body, att.failure, view,
                                         self.run.server.context_window)
        recorded = self._enter(prompt, status, view) if enters else None
        record = Turn(run_id=self.run.run_id, turn=n, prompt=prompt.ref(), sent_at=sent_at,
                      status=status, http_status=att.http_status, error=error, attempts=attempts,
                      connection=att.connection, chunks=att.chunks, content=view.content, reasoning=view.reasoning,
                      cold=cold, marker=marker, history=recorded, skipped=list(skipped),
                      base_url=None if self.transport.base_url == self.run.base_url else self.transport.base_url,
                      repeat=repeat)
        self.progress.end_turn(record)
        return record

    def _confirm_model(self, n: int, chunks: list) -> None:
        """Take the model a stream names as the one served, and warn once when it
        is not the one asked for (llama-server answers with its own whatever the
        request names); the run record, written after the first answer, keeps it."""
        named = None if self._model_warned else streamed_model(chunks)
        if named is None:
            return
        if named != self.run.model:
            self._model_warned = True
            self.progress.say(f"turn {n}: the server answered as model {named!r}, "
                              f"not {self.run.model!r} as asked")
            self.run.served_model = named
        elif self.run.served_model is None:
            self.run.served_model = named

    def _enter(self, prompt: Prompt, status: str, view) -> str | None:
        """Put a turn's exchange into the history; return the recorded answer
        that went in place of the model's own (--history)."""
        # a fixed history goes on the same whatever the model did; a turn that
        # ends the run enters nothing, so that --resume sends it again
        goes_on = status == STATUS_OK or (status != STATUS_INTERRUPTED and self.settings.on_error == "continue")
        if self.history is not None and goes_on:
            answer = self.history.answer(prompt.id)
            self.conversation.add_answer(prompt.id, prompt.text, answer)
            return answer
        if status == STATUS_OK:
            self.conversation.add(prompt.id, prompt.text, view)
        return None

    def _send(self, n: int, prompt: Prompt, body: dict):
        """Send a turn, again after a transient failure; a signal ends the wait as `interrupted`.

        Return the last attempt and how many requests went out: a resend on a
        closed connection counts, but spends no retry.
        """
        att, tries, requests = None, 0, 0
        try:
            with self.interrupts.waiting():
                while True:
                    tries += 1
                    self.progress.start_turn(n, prompt)
                    att = self.transport.stream(body, self.settings.timeout, self.progress.on_event)
                    requests += att.requests
                    if att.interrupted or tries > self.settings.retries or not outcome.is_transient(
                            att.http_status, att.failure and att.failure[0], bool(att.chunks)):
                        return att, requests
                    wait = att.retry_after_s if att.retry_after_s is not None else 2 ** (tries - 1)
                    why = att.failure[1] if att.failure else outcome.error_message(att.body) \
                        or f"HTTP {att.http_status}"
                    self.progress.say(f"turn {n}: {why}; retry {tries} in {wait:g} s")
                    time.sleep(min(wait, 60))
        except KeyboardInterrupt:
            att = att or Attempt()
            att.failure = INTERRUPTED
            return att, requests

    def asked(self) -> list[tuple[Fact, int, str]]:
        """The questions of a probe round: each fact stated so far in its first
        --probe-forms wordings (those it has), as (fact, form, question), form by form."""
        stated = [f for f in self.facts if f.stated_in in self.conversation.answered]
        forms = max(len(f.wordings) for f in stated) if stated else 0
        return [(f, k, f.wordings[k]) for k in range(min(forms, self.settings.probe_forms))
                for f in stated if k < len(f.wordings)]

    def probe_round(self, after_turn: int) -> Iterator[Probe]:
        """Ask each fact stated so far, each wording in a request of its own that the
        conversation never sees (the history and its prefix cache stay as they are)."""
        asked = self.asked()
        t_start = time.monotonic()
        for k, (fact, form, question) in enumerate(asked, 1):
            self.interrupts.check()
            self.progress.start_probe(after_turn, k, len(asked))
            body = {"model": self.run.model, **self.params,
                    "max_tokens": self.settings.probe_max_tokens,
                    "messages": self.conversation.messages + [{"role": "user", "content": question}]}
            sent_at = now_iso()
            try:
                with self.interrupts.waiting():
                    att = self.transport.stream(body, self.settings.timeout)
            except KeyboardInterrupt:
                    att = Attempt(failure=INTERRUPTED)
            view = read_stream(att.chunks)
            status, error = outcome.classify(att.http_status, att.body, att.failure, view,
                                             self.run.server.context_window)
            yield Probe(run_id=self.run.run_id, after_turn=after_turn, fact=fact, sent_at=sent_at,
                        status=status, http_status=att.http_status, error=error, chunks=att.chunks,
                        content=view.content, connection=att.connection, form=form, question=question)
            if status == STATUS_INTERRUPTED:
                raise KeyboardInterrupt
        if asked:
            self.progress.end_probes(after_turn, len(asked), time.monotonic() - t_start)
