"""lalm-chat: hold one growing conversation with a server and record every turn.

Usage:
    lalm-chat [--model M] [--base-url URL] [FILE ...]

Reads `prompt` records, sends each prompt with the whole history before it,
and writes a `run` record, then one `turn` record per prompt as the turn ends:
every SSE event verbatim with its arrival time in seconds after the request
was sent. It derives no metric (that is lalm-metrics). A failed request is
recorded as a turn whose status is not "ok".

Example:
    lalm-prompts --tier expert --num-rounds 5 | lalm-chat --model qwen3-8b \\
        | tee turns.jsonl | lalm-metrics | lalm-report
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Iterable, Iterator

from . import __version__
from .jsonl import (ExitCode, InputError, RecordWriter, add_common_args, add_input_args,
                    entry, load_as, parse_args, read_records, streams)
from .progress import Progress
from .reasoning import read_stream
from .records import STATUS_ERROR, STATUS_INTERRUPTED, STATUS_OK, Probe, Prompt, Run, Turn
from .serverinfo import Unreachable, preflight

PROG = "lalm-chat"
DEFAULT_BASE_URL = "http://localhost:1234/v1"
PLACEHOLDER_KEY = "lm-studio"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_params(args) -> dict:
    """The generation parameters sent with every request (never the key)."""
    params = {"temperature": args.temperature, "max_tokens": args.max_tokens}
    if args.reasoning_effort:
        params["reasoning_effort"] = args.reasoning_effort
    params["stream"] = True
    params["stream_options"] = {"include_usage": True}
    params.update(args.extra_body or {})
    return params


class Conversation:
    """The messages sent so far, and what a finished turn adds to them."""

    def __init__(self, system: str | None, keep_reasoning: bool, rule: str | None = None):
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.keep_reasoning = keep_reasoning
        self.rule = rule
        self.answered: set[int] = set()

    def _user(self, text: str) -> dict:
        # a standing rule is given once, with the first question
        first = not any(m["role"] == "user" for m in self.messages)
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
        from .transport import is_overflow_message
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
        self.params = request_params(args)

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
        att, attempts = None, 0
        while True:
            attempts += 1
            self.progress.start_turn(n, prompt)
            att = self.transport.stream(body, self.args.timeout, self.progress.on_event)
            if not att.transient or attempts > self.args.retries:
                break
            wait = att.retry_after_s if att.retry_after_s is not None else 2 ** (attempts - 1)
            self.progress.say(f"turn {n}: {att.error['message']}; retry {attempts} in {wait:g} s")
            time.sleep(min(wait, 60))
        status, error, view = turn_outcome(att, self.window)
        if status == STATUS_OK:
            self.conversation.add(prompt.id, prompt.text, view.content, view.reasoning)
        record = Turn(run_id=self.run["run_id"], turn=n, prompt={"id": prompt.id, "tier": prompt.tier, "text": prompt.text},
                      sent_at=sent_at, status=status, http_status=att.http_status,
                      error=error, attempts=attempts, chunks=att.chunks,
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
                        content=view.content).to_dict()
            if status == STATUS_INTERRUPTED:
                raise KeyboardInterrupt



def new_run(args, model: str | None, server: dict, base_url: str, memory: dict | None) -> dict:
    params = {k: v for k, v in request_params(args).items() if k != "stream"}
    params.update(system=args.system, keep_reasoning=args.keep_reasoning, retries=args.retries,
                  timeout=args.timeout, stall_timeout=args.stall_timeout, on_error=args.on_error)
    if memory:
        params.update(probe_every=args.probe_every, probe_max_tokens=args.probe_max_tokens,
                      rule=memory.get("rule"), facts=[f["id"] for f in memory["facts"]])
    return Run(run_id=uuid.uuid4().hex[:12], started_at=now_iso(),
               tool={"name": "lalmpipe", "version": __version__}, base_url=base_url,
               model=model, params=params, server=server).to_dict()


def load_prompts(args, stdin) -> list[Prompt]:
    prompts = []
    for source, line, rec in read_records(args.inputs, stdin, consumes={"prompt"}, passes=set(),
                                          hint={"turn": "lalm-chat reads prompts; see lalm-replay"}):
        prompts.append(load_as(Prompt, source, line, rec))
    if args.num_rounds is not None:
        prompts = prompts[:args.num_rounds]
    return prompts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Hold one growing conversation with an OpenAI-compatible "
        "server and record every streamed chunk with its arrival time.",
        epilog="example:\n  lalm-prompts --tier expert --num-rounds 5 | lalm-chat --model qwen3-8b "
        "| tee turns.jsonl | lalm-metrics | lalm-report\n\nenvironment: OPENAI_BASE_URL, OPENAI_API_KEY "
        "(sent as a Bearer token, never written anywhere)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_args(p)
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
                   help="server URL (default: $OPENAI_BASE_URL or %(default)s)")
    p.add_argument("--model", help="model name (default: the first the server lists)")
    p.add_argument("--temperature", type=float, default=0.7, help="default: %(default)s")
    p.add_argument("--max-tokens", type=int, default=32768, help="default: %(default)s")
    p.add_argument("--reasoning-effort", default="low",
                   help="sent as reasoning_effort (default: low; '' sends none)")
    p.add_argument("--system", help="a system message at the start of the conversation")
    p.add_argument("--extra-body", type=_json_object, metavar="JSON",
                   help='more request fields, e.g. \'{"reasoning_format": "none"}\'')
    p.add_argument("--keep-reasoning", action="store_true",
                   help="append the reasoning to the history too (default: the answer only)")
    p.add_argument("--num-rounds", type=int, metavar="N", help="only the first N prompts")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="bound on a whole turn")
    p.add_argument("--stall-timeout", type=float, default=300.0, metavar="S",
                   help="end a turn after S seconds with no bytes (default: %(default)s)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="retries of refused connections, HTTP 429 and 5xx (default: %(default)s)")
    p.add_argument("--on-error", choices=("stop", "continue"), default="stop",
                   help="after a failed turn: stop (the ceiling is found) or go on")
    p.add_argument("--probe-every", type=int, metavar="K",
                   help="every K turns ask each planted fact stated so far, in forked requests "
                        "kept out of the conversation, and give a standing rule in turn 1")
    p.add_argument("--facts", metavar="FILE", help="planted facts and the rule "
                   "(default: prompts/lalm_facts.json)")
    p.add_argument("--probe-max-tokens", type=int, default=64, metavar="N",
                   help="max_tokens of a probe (default: %(default)s)")
    p.add_argument("--output", metavar="FILE", help="also append every record to FILE, synced to disk")
    p.add_argument("--resume", action="store_true", help="continue the partial run in --output FILE")
    add_common_args(p)
    return p


def _json_object(text: str) -> dict:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return obj


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    stdin, stdout, stderr = streams(stdin, stdout, stderr)
    parser = build_parser()
    args = parse_args(parser, argv, stdout, stderr)
    if isinstance(args, int):
        return args
    if args.resume and not args.output:
        print(f"{PROG}: error: --resume needs --output FILE", file=stderr)
        return ExitCode.USAGE
    return entry(PROG, lambda: _run(args, stdin, stdout, stderr), stdout, stderr, args.debug)


def _run(args, stdin, stdout, stderr) -> int:
    from .resume import previous_run
    from .transport import Transport

    prompts = load_prompts(args, stdin)
    memory = memory_of(args)
    progress = Progress(stderr, args.quiet, total=len(prompts))
    done = previous_run(args.output, progress.say) if args.resume else None
    api_key = os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_KEY
    transport = Transport(args.base_url, api_key, args.stall_timeout)
    with _term_as_interrupt():
        _converse(args, transport, prompts, done, memory, progress, stdout)
    return ExitCode.OK


def _converse(args, transport, prompts, done, memory, progress, stdout) -> None:
    from .resume import open_output

    try:
        model, server = preflight(transport, args.model)
        if model is None:
            raise InputError(f"the server at {transport.base_url} lists no model: give --model")
        run = done.run if done else new_run(args, model, server, transport.base_url, memory)
        warn_if_too_small(progress, prompts, server.get("context_window"), args.max_tokens)
        rule = ((run["params"] or {}).get("rule") or {}).get("text")
        conversation = Conversation(args.system, args.keep_reasoning, rule)
        first = 1
        if done:
            prompts, first = done.apply(prompts, conversation, progress)
        with open_output(args.output, args.resume) as also:
            out = RecordWriter(stdout, also)
            if not done:
                out.write(run)
            else:
                RecordWriter(stdout).write(run)
            facts = memory["facts"] if memory else ()
            for record in Chat(transport, args, run, conversation, progress, facts).turns(prompts, first):
                out.write(record)
    finally:
        transport.close()


def memory_of(args) -> dict | None:
    """The planted facts and the rule, when probes are asked for."""
    if not args.probe_every:
        return None
    from .recall import DEFAULT_FACTS, load_facts
    return load_facts(args.facts or DEFAULT_FACTS)


def warn_if_too_small(progress, prompts, window, max_tokens) -> None:
    if not window:
        return
    from . import tokens
    need = sum(tokens.count(p.text) or 0 for p in prompts)
    if need + max_tokens > window:
        progress.say(f"the context window is {window} tokens; the {len(prompts)} prompts alone "
                     f"take about {need} and each answer may add up to {max_tokens}: "
                     "expect the context to overflow")


@contextlib.contextmanager
def _term_as_interrupt():
    """Treat SIGTERM like Ctrl-C while the run lasts, so the turn in flight is written."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
