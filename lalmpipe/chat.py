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
import json
import os
import uuid

import msgspec

from . import __version__
from .cli import (ExitCode, add_common_args, add_input_args, new_parser, non_negative_int, positive_int,
                  positive_seconds, run_command)
from .errors import InputError, UsageError
from .jsonl import RecordWriter, read_records
from .conversation import Chat, Conversation, Interrupts, now_iso, request_params
from .progress import Progress
from .render.columns import plural
from .localserver.process import CONFIG_VAR
from .records import DEFAULT_SETTINGS, Prompt, Run, Server, Settings
from .redact import API_KEY_VAR
from .serverinfo import preflight
from .transport import DEFAULT_BASE_URL, Transport, check_base_url

PROG = "lalm-chat"
BASE_URL_VAR = "OPENAI_BASE_URL"
PROBE_FORMS = 2     # wordings of each fact a probe round asks, against the same cached prefix


def new_run(args, model: str, server: Server, base_url: str, memory: dict | None, history) -> Run:
    settings = Settings.from_args(args)
    if memory:
        settings = msgspec.structs.replace(settings, rule=memory["rule"], facts=memory["facts"])
    if history:
        settings = msgspec.structs.replace(settings, history=history.source)
    return Run(run_id=uuid.uuid4().hex[:12], started_at=now_iso(),
               tool={"name": "lalmpipe", "version": __version__}, base_url=base_url,
               model=model, params=request_params(args), settings=settings, server=server,
               served_model=model if server.models else None, label=args.label)


def load_prompts(args, stdin) -> tuple[list[Prompt], list[dict]]:
    """The prompts to send, and records of other kinds to pass through.

    A prompt id names one turn (--resume and --history match turns by it):
    an id read twice is refused, naming where each one was read."""
    prompts, others = [], []
    seen: dict[int, str] = {}      # prompt id -> where it was read
    for item in read_records(args.inputs, stdin, consumes={"prompt"},
                             hint={"turn": "lalm-chat reads prompts; see lalm-replay"}):
        if isinstance(item.record, Prompt):
            where = f"{item.source}:{item.lineno}"
            if item.record.id in seen:
                raise InputError(f"{where}: prompt id {item.record.id} again (first at "
                                 f"{seen[item.record.id]}): a prompt id names one turn, "
                                 "for --resume and --history")
            seen[item.record.id] = where
            prompts.append(item.record)
        else:
            others.append(item.raw)
    if args.num_rounds is not None:
        prompts = prompts[:args.num_rounds]
    return prompts, others


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(PROG, "Hold one growing conversation with an OpenAI-compatible server and "
                   "record every streamed chunk with its arrival time.",
                   ["lalm-prompts --tier expert --num-rounds 5 | lalm-chat --model qwen3-8b "
                    "| tee turns.jsonl | lalm-metrics | lalm-report",
                    "lalm-prompts | lalm-chat --output run.jsonl --probe-every 10 > /dev/null",
                    "lalm-prompts | lalm-chat --output run.jsonl --resume   # after an interruption",
                    "lalm-prompts | lalm-chat --history other.jsonl --at 50,100,200 --cold --probe-every 1",
                    "lalm-prompts | lalm-chat --history other.jsonl --every 50 --repeat 3 > depths.jsonl",
                    "",
                    "environment: OPENAI_BASE_URL, OPENAI_API_KEY (sent as a Bearer token, "
                    "never written anywhere)"])
    add_input_args(p)
    # the environment's value is not shown: it may hold a key
    p.add_argument("--base-url", help=f"server URL (default: ${BASE_URL_VAR}, else {DEFAULT_BASE_URL})")
    p.add_argument("--model", help="the model, one the server lists (default: the first it lists)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default: %(default)s)")
    p.add_argument("--max-tokens", type=positive_int, default=32768,
                   help="the longest answer, sent as max_tokens (default: %(default)s)")
    p.add_argument("--reasoning-effort", default="low",
                   help="sent as reasoning_effort (default: low; '' sends none)")
    p.add_argument("--system", help="a system message at the start of the conversation")
    p.add_argument("--extra-body", type=_json_object, metavar="JSON",
                   help='more request fields, e.g. \'{"reasoning_format": "none"}\'')
    p.add_argument("--keep-reasoning", action="store_true",
                   help="append reasoning sent apart from the answer to the history too (default: "
                        "the answer only, exactly as streamed: an inline <think> block is part of it)")
    p.add_argument("--num-rounds", type=positive_int, metavar="N", help="only the first N prompts")
    p.add_argument("--timeout", type=positive_seconds, default=None, metavar="S",
                   help="bound on a whole turn (default: none)")
    p.add_argument("--stall-timeout", type=positive_seconds, default=DEFAULT_SETTINGS.stall_timeout, metavar="S",
                   help="end a turn after S seconds without a data event; keep-alive comments do not "
                        "count (default: %(default)s)")
    p.add_argument("--retries", type=non_negative_int, default=DEFAULT_SETTINGS.retries, metavar="N",
                   help="retries of refused connections, HTTP 429 and 5xx (default: %(default)s)")
    p.add_argument("--on-error", choices=("stop", "continue"), default=DEFAULT_SETTINGS.on_error,
                   help="after a failed turn: stop (the ceiling is found) or go on (default: %(default)s)")
    p.add_argument("--probe-every", type=positive_int, metavar="K",
                   help="every K turns ask each planted fact stated so far, in forked requests "
                        "kept out of the conversation, and give a standing rule in turn 1")
    p.add_argument("--facts", metavar="FILE", help="planted facts and the rule "
                   "(default: the bundled facts)")
    p.add_argument("--probe-max-tokens", type=positive_int, default=DEFAULT_SETTINGS.probe_max_tokens, metavar="N",
                   help="max_tokens of a probe (default: %(default)s)")
    p.add_argument("--probe-forms", type=positive_int, default=PROBE_FORMS, metavar="N",
                   help="ask each fact in its first N wordings (its question, then its questions; "
                        "default: %(default)s)")
    p.add_argument("--history", dest="history_file", metavar="RECORDING",
                   help="the history's answers come from this lalm-chat recording (matched by prompt "
                        "id), not from the model: every model is sent the same messages")
    p.add_argument("--at", type=id_list, metavar="LIST",
                   help="with --history, send only these prompt ids, e.g. 50,100-102; the others "
                        "enter the history from the recording unsent")
    p.add_argument("--label", metavar="NAME",
                   help="the run's name in a comparison (default: its model), e.g. the setting it measures")
    p.add_argument("--depths", type=depth_list, metavar="LIST",
                   help="measure the turns whose request first reaches each of these depths of context, "
                        "in cl100k tokens (1k = 1,024: 1k,2k,4k,8k or 1000,5000), over --history (default: "
                        "the reference conversation that ships with lalmpipe); as --at, the turns between "
                        "enter the history unsent")
    p.add_argument("--every", type=positive_int, metavar="K",
                   help="with --history, send only every K-th prompt (with --at: those too)")
    p.add_argument("--repeat", type=positive_int, metavar="N",
                   help="with --at or --every, send each chosen turn N times (each recorded; the "
                        "history takes it once) for the mean and sd of its speed (default: 1)")
    p.add_argument("--cold", action="store_true",
                   help="make every turn sent a full prefill (llama.cpp: cache_prompt false; "
                        "elsewhere a unique first line)")
    p.add_argument("--output", metavar="FILE", help="also append every record to FILE, synced to disk")
    p.add_argument("--resume", action="store_true", help="continue the partial run in --output FILE")
    add_common_args(p)
    return p


def base_url_of(args) -> str:
    """The server's URL: --base-url, else $OPENAI_BASE_URL, else LM Studio's;
    a usage error, naming where it was given, unless it is http(s) with a host."""
    if args.base_url is not None:
        url, given_by = args.base_url, "--base-url"
    elif os.environ.get(BASE_URL_VAR):
        url, given_by = os.environ[BASE_URL_VAR], BASE_URL_VAR
    else:
        return DEFAULT_BASE_URL
    check_base_url(url, given_by)
    return url


def id_list(text: str) -> list[int]:
    """An argparse type: prompt ids or ranges, as lalm-prompts --ids takes them."""
    from .prompts import parse_ids
    return sorted(parse_ids(text))


def _json_object(text: str) -> dict:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return obj


def depth_list(text: str) -> list[int]:
    """An argparse type: depths in tokens, "1k,2k,32k" (k = 1,024) or plain numbers."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        scale = 1024 if part.endswith("k") else 1
        try:
            n = int(float(part[:-1] if scale > 1 else part) * scale)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of depths in tokens (e.g. 1k,2k,4k or 1000,2000)")
        out.append(n)
    return out


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    return run_command(PROG, build_parser(), argv, stdin, stdout, stderr, _run)


def _run(args, stdin, stdout, stderr) -> int:
    from .history import REFERENCE_NAME, Plan, depth_turns, open_history
    from .tokens import count
    from .resume import check_output, previous_run

    if args.depths and (args.at or args.every):
        raise UsageError("--depths chooses the turns itself: give it without --at and --every")
    if args.depths:
        args.history_file = args.history_file or REFERENCE_NAME
    if (args.at or args.every) and not args.history_file:
        raise UsageError("--at and --every need --history RECORDING: the answers of the "
                         "turns not sent would not exist")
    if args.repeat is not None and not (args.at or args.every or args.depths):
        raise UsageError("--repeat needs --at, --every or --depths: it sends each chosen turn again")
    args.repeat = args.repeat or 1
    if args.resume and not args.output:
        raise UsageError("--resume needs --output FILE")
    base_url = base_url_of(args)
    if args.output:
        check_output(args.output, args.resume)
    prompts, others = load_prompts(args, stdin)
    progress = Progress(stderr, args.quiet)
    done, mend = previous_run(args.output) if args.resume else (None, None)
    memory = None if done else memory_of(args)
    history = open_history(args.history_file, done.run.settings.history if done else None, bool(done))
    if args.depths and not done:
        assert history is not None      # --depths takes the reference when no --history is given
        # in every request: the system message, and with the probes the standing rule
        extra = sum(count(t or "") or 0 for t in (args.system, ((memory or {}).get("rule") or {}).get("text")))
        chosen = depth_turns(history, prompts, args.depths, extra)
        args.depths, args.at = sorted(chosen.items()), sorted(chosen)
    settings = done.run.settings if done else Settings.from_args(args)
    plan = Plan(prompts, settings.at, settings.every)
    prompts = plan.used(prompts)
    if history:
        history.check(prompts)
    if done:
        done.check_same(args.model, prompts)
    # chosen turns cost what their depth costs: no estimate of the time left
    progress.total = None if plan.selective else len(prompts)
    interrupts = Interrupts()
    with interrupts.installed():
        transport = Transport(base_url, os.environ.get(API_KEY_VAR), settings.stall_timeout)
        try:
            model, server = served_model(args, done, transport, interrupts, progress)
            run = done.run if done else new_run(args, model, server, transport.base_url, memory, history)
            if mend:        # the run goes on: only now may its file change
                mend.apply(progress.say)
            progress.follow(run, done.turns if done else ())
            warn_if_too_small(progress, prompts, run.server.context_window, run.params.get("max_tokens"))
            chat = Chat(transport, run, Conversation.of(run), progress, interrupts, run.settings.facts or (),
                        history, plan)
            _converse(args, chat, prompts, others, done, stdout)
        finally:
            transport.close()
    return ExitCode.OK


def served_model(args, done, transport, interrupts, progress) -> tuple[str, Server]:
    """The model to ask for, as the server lists it, and what the server said of
    itself; a resumed run's server must serve the run's model."""
    asked = args.model or (done.run.model if done else None)
    with interrupts.waiting():
        model, server = preflight(transport, asked, "--model" if args.model else "--resume: the run's model")
    if model is None:
        raise InputError(f"the server at {transport.base_url} lists no model: give --model")
    if asked is not None and model != asked:
        progress.say(f"--model {asked!r}: the server lists it as {model!r}")
    if done:
        done.check_server(transport.base_url, server, progress.say)
    return model, msgspec.structs.replace(server, config=local_config(transport.base_url))


def local_config(base_url: str) -> dict | None:
    """How the project's own server was started, where this run is against it (lalmpipe.localserver
    run tells its command in CONFIG_VAR); None for any other server."""
    try:
        config = json.loads(os.environ.get(CONFIG_VAR) or "null")
    except ValueError:
        return None
    return config if isinstance(config, dict) and config.get("base_url") == base_url else None


def _converse(args, chat, prompts, others, done, stdout) -> None:
    from .resume import open_output

    first = 1
    with open_output(args.output) as also:
        out = RecordWriter(stdout, also, on_broken=chat.progress.say)
        waiting = []
        if done:
            # the stream carries the whole run, so a pipeline measures it as the file would
            prompts, first = done.apply(prompts, chat.conversation, chat.progress)
            out.write_text(done.text)
        else:
            # the run record waits for the first answer, whose stream confirms the model served
            waiting = [chat.run, *others]
        for record in chat.turns(prompts, first):
            for earlier in waiting:
                out.write(earlier)
            waiting = []
            out.write(record)
            chat.interrupts.check()
        for earlier in waiting:
            out.write(earlier)


def memory_of(args) -> dict | None:
    """The planted facts and the rule, when probes are asked for."""
    if not args.probe_every:
        return None
    from .facts import DEFAULT_FACTS, load_facts
    return load_facts(args.facts or DEFAULT_FACTS)


def warn_if_too_small(progress, prompts, window, max_tokens) -> None:
    if not window or not max_tokens:
        return
    from . import tokens
    need = sum(tokens.count(p.text) or 0 for p in prompts)
    if need + max_tokens > window:
        take = "takes" if len(prompts) == 1 else "take"
        progress.say(f"the context window is {window} tokens; the {plural(len(prompts), 'prompt')} alone "
                     f"{take} about {need} and each answer may add up to {max_tokens}: "
                     "expect the context to overflow")
