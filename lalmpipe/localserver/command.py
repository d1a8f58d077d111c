"""The command line, `python -m lalmpipe.localserver fetch|install|start|stop|run`:
each subcommand parsed here and handed to the fetching or the process module; `run`
keeps a command and its server together until either ends or is interrupted."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess

from ..signals import HANGUP, STOPS, hold, on_stop
from .catalog import DEFAULT_ENGINE, DEFAULT_MODEL, ENGINE_MODEL, ENGINES, FETCHED, MODELS
from .fetching import fetch, prepare, say
from .process import CONFIG_VAR, LocalServer, start_background, stop_background, stop_group

EPILOG = """\
examples:
  python -m lalmpipe.localserver fetch gemma3-270m
  python -m lalmpipe.localserver start --model smollm2-135m --ctx 4096
  python -m lalmpipe.localserver start --server-args='-ctk q8_0 -ctv q8_0 -fa on'
  python -m lalmpipe.localserver run --server-args=--no-context-shift -- \\
      sh -c 'lalm-prompts --num-rounds 8 | lalm-chat | lalm-metrics | lalm-report'
  python -m lalmpipe.localserver stop

A second `start` stops the server the first left running and listens on a new port.
Everything is kept in $LALM_CACHE, else $XDG_CACHE_HOME/lalmpipe, else ~/.cache/lalmpipe."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lalmpipe.localserver", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="A real local LLM server (an engine) for lalmpipe.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="build llama-server and assemble the models (once each)").add_argument(
        "models", nargs="*", metavar="MODEL",
        help=f"{', '.join(MODELS)} (default: llama-server and {', '.join(FETCHED)}; named models "
             "are assembled without building llama-server)")
    sub.add_parser("install", help="install engines and prepare their model (once)").add_argument(
        "engines", nargs="*", metavar="ENGINE", help=f"{', '.join(ENGINES)} (default: all)")
    for name, what in (("start", "start a server in the background and print its base URL"),
                       ("run", "start a server, run a command with OPENAI_BASE_URL set, stop the server")):
        sp = sub.add_parser(name, help=what, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE, help="default: %(default)s")
        sp.add_argument("--model", choices=MODELS,
                        help=f"default: {DEFAULT_MODEL} on {DEFAULT_ENGINE}, {ENGINE_MODEL} on the others")
        sp.add_argument("--ctx", type=int, help="context size (default: the model's whole window)")
        sp.add_argument("--port", type=int, help="default: a free port")
        sp.add_argument("--server-args", metavar="ARGS", action="append", default=[],
                        help="more arguments for the engine, split as a shell would, after lalmpipe's own "
                             "(repeatable; write --server-args='-ctk q8_0' so that they are not taken for "
                             "this command's own options)")
    sub.choices["run"].add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG ...]")
    sub.add_parser("stop", help="stop the server that 'start' started")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.cmd == "fetch":
        unknown = [m for m in args.models if m not in MODELS]
        if unknown:
            p.error(f"unknown model {unknown[0]!r} (choose from {', '.join(MODELS)})")
        fetch(args.models)
    elif args.cmd == "install":
        unknown = [e for e in args.engines if e not in ENGINES]
        if unknown:
            p.error(f"unknown engine {unknown[0]!r} (choose from {', '.join(ENGINES)})")
        for engine in args.engines or ENGINES:   # one at a time: each install takes both cores
            prepare(ENGINES[engine], MODELS[ENGINES[engine].default_model])
    elif args.cmd == "start":
        srv = start_background(args.engine, args.model, args.ctx, args.port, server_args(args))
        say(f"{srv.engine.program} ({srv.served_name}) listening; stop it with: make server-stop")
        print(srv.base_url)
    elif args.cmd == "stop":
        engine = stop_background()
        say(f"stopped {ENGINES[engine].program}" if engine else "no server was running")
    else:
        return run(args)
    return 0


def server_args(args) -> list[str]:
    return [a for text in args.server_args for a in shlex.split(text)]


# the signals that end a run: Ctrl-C, kill, and the terminal going away
ENDS = STOPS + HANGUP


def run(args) -> int:
    """Run a command beside a server that is stopped however the command ends."""
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    received = []

    def interrupted(signum, frame):
        hold(ENDS)      # from here on the server is being stopped: a second Ctrl-C must not cut that short
        received.append(signum)
        raise KeyboardInterrupt
    with on_stop(interrupted, ENDS):
        return _beside(args, cmd, received)


def _beside(args, cmd: list[str], received: list[int]) -> int:
    child = None
    try:
        srv = LocalServer(args.model, ctx=args.ctx, extra=server_args(args), port=args.port, engine=args.engine)
        prepare(srv.engine, srv.model)
        with srv:
            try:
                env = dict(os.environ, OPENAI_BASE_URL=srv.base_url, **{CONFIG_VAR: json.dumps(srv.config())})
                # a process group of its own: every process of the command (a pipeline, make's
                # children) is told to stop, and before the server goes, so none records its loss
                child = subprocess.Popen(cmd, env=env, preexec_fn=os.setpgrp)
                say(f"{srv.engine.program} ({srv.model.alias}) at {srv.base_url}")
                code = child.wait()
                hold(ENDS)
                return code
            except KeyboardInterrupt:
                if child is not None:
                    stop_group(child.pid, signum=received[0])
                return 130
    except KeyboardInterrupt:     # while the server was prepared or loading
        return 130
