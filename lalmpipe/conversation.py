"""The conversation lalm-chat holds: what each request carries, each turn's
outcome, retries, the stop policy and the forked recall probes."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Iterable, Iterator

from .reasoning import read_stream
from .records import STATUS_ERROR, STATUS_INTERRUPTED, STATUS_OK, Probe, Prompt, Turn
from .transport import is_overflow_message


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# a run record's `params` holds what each request carries and, beside it, these
# settings of the run; the record is the one source of both, a resumed run included
SETTINGS = ("system", "keep_reasoning", "retries", "timeout", "stall_timeout", "on_error",
            "probe_every", "probe_max_tokens", "rule", "facts")


def request_params(args) -> dict:
    """The generation parameters the flags ask every request to carry (never the key)."""
    params = {"temperature": args.temperature, "max_tokens": args.max_tokens}
    if args.reasoning_effort:
        params["reasoning_effort"] = args.reasoning_effort
    params["stream_options"] = {"include_usage": True}
    params.update(args.extra_body or {})
    return params


def sent_params(run_params: dict) -> dict:
    """What each request of a run carries besides model and messages."""
    return {**{k: v for k, v in run_params.items() if k not in SETTINGS}, "stream": True}


class Conversation:
    """The messages sent so far, and what a finished turn adds to them."""

    def __init__(self, system: str | None, keep_reasoning: bool, rule: str | None = None):
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.keep_reasoning = keep_reasoning
        self.rule = rule
        self.answered: set[int] = set()

    def _user(self, text: str) -> dict:
        # a standing rule is given once, with the first question
        first = not self.answered
        return {"role": "user", "content": f"{self.rule}\n\n{text}" if self.rule and first else text}

    def request(self, text: str) -> list[dict]:
        return self.messages + [self._user(text)]

    def add(self, prompt_id: int, text: str, content: str, reasoning: str) -> None:
        answer = f"<think>\n{reasoning}\n</think>\n\n{content}" \
            if self.keep_reasoning and reasoning else content
        self.messages += [self._user(text), {"role": "assistant", "content": answer}]
        self.answered.add(prompt_id)


def turn_outcome(att, window: int | None) -> tuple[str, dict | None, object]:
    """Decide a turn's status and error from what its request got back."""
    view = read_stream(att.chunks)
    if att.interrupted:
        return STATUS_INTERRUPTED, att.error, view
    if att.error:
        return STATUS_ERROR, att.error, view
    if view.error is not None:
        text = json.dumps(view.error)
        kind = "context_overflow" if is_overflow_message(text) else "stream"
        return STATUS_ERROR, {"kind": kind, "message": _message(view.error), "body": text}, view
    if view.events == 0:
        return STATUS_ERROR, {"kind": "empty", "message": "HTTP 200 with no events", "body": None}, view
    if not view.done and view.finish_reason is None:
        return STATUS_ERROR, {"kind": "stream", "message": "stream ended before finish_reason or [DONE]",
                              "body": None}, view
    if view.finish_reason == "length" and window and view.usage:
        used = (view.usage.get("prompt_tokens") or 0) + (view.usage.get("completion_tokens") or 0)
        if used >= window:
            return STATUS_ERROR, {"kind": "context_overflow",
                                  "message": f"stream cut by the context window ({used} of {window} tokens)",
                                  "body": None}, view
    return STATUS_OK, None, view


def _message(err) -> str:
    return str(err.get("message") or err) if isinstance(err, dict) else str(err)


class Chat:
    """Run the conversation: one turn per prompt, with retries and the stop policy."""

    def __init__(self, transport, args, run: dict, conversation: Conversation, progress,
                 facts: list[dict] = ()):
        self.transport, self.args, self.run = transport, args, run
        self.facts = list(facts)
        self.conversation = conversation
        self.progress = progress
        self.window = (run["server"] or {}).get("context_window")
        self.params = sent_params(run["params"] or {})

    def turns(self, prompts: Iterable[Prompt], first_turn: int = 1) -> Iterator[dict]:
        n = first_turn
        for prompt in prompts:
            record, status = self.one_turn(n, prompt)
            yield record
            if status == STATUS_INTERRUPTED:
                raise KeyboardInterrupt
            if status == STATUS_OK and self.args.probe_every and n % self.args.probe_every == 0:
                yield from self.probe_round(n)
            if status != STATUS_OK and self.args.on_error == "stop":
                self.progress.say(f"stopping at turn {n}: {record['error']['kind']}: "
                                  f"{record['error']['message']} (--on-error continue goes on)")
                return
            n += 1

    def one_turn(self, n: int, prompt: Prompt) -> tuple[dict, str]:
        body = {"model": self.run["model"], "messages": self.conversation.request(prompt.text),
                **self.params}
        sent_at = now_iso()
        att, attempts, requests = None, 0, 0
        while True:
            attempts += 1
            self.progress.start_turn(n, prompt)
            att = self.transport.stream(body, self.args.timeout, self.progress.on_event)
            requests += att.requests      # a resend on a closed connection counts, but spends no retry
            if not att.transient or attempts > self.args.retries:
                break
            wait = att.retry_after_s if att.retry_after_s is not None else 2 ** (attempts - 1)
            self.progress.say(f"turn {n}: {att.error['message']}; retry {attempts} in {wait:g} s")
            time.sleep(min(wait, 60))
        status, error, view = turn_outcome(att, self.window)
        if status == STATUS_OK:
            self.conversation.add(prompt.id, prompt.text, view.content, view.reasoning)
        record = Turn(run_id=self.run["run_id"], turn=n,
                      prompt={"id": prompt.id, "tier": prompt.tier, "text": prompt.text},
                      sent_at=sent_at, status=status, http_status=att.http_status,
                      error=error, attempts=requests, connection=att.connection, chunks=att.chunks,
                      content=view.content, reasoning=view.reasoning).to_dict()
        self.progress.end_turn(record, view)
        return record, status

    def probe_round(self, after_turn: int) -> Iterator[dict]:
        """Ask each fact stated so far, each in a request of its own that the
        conversation never sees (the history and its prefix cache stay as they are)."""
        for fact in self.facts:
            if fact["stated_in"] not in self.conversation.answered:
                continue
            body = {"model": self.run["model"], **self.params,
                    "max_tokens": self.args.probe_max_tokens,
                    "messages": self.conversation.messages + [{"role": "user", "content": fact["question"]}]}
            sent_at = now_iso()
            att = self.transport.stream(body, self.args.timeout)
            status, error, view = turn_outcome(att, self.window)
            yield Probe(run_id=self.run["run_id"], after_turn=after_turn, fact=fact, sent_at=sent_at,
                        status=status, http_status=att.http_status, error=error, chunks=att.chunks,
                        content=view.content, connection=att.connection).to_dict()
            if status == STATUS_INTERRUPTED:
                raise KeyboardInterrupt
