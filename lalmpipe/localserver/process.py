"""Run a server process: an engine started on 127.0.0.1 with a model (and any extra
arguments for the engine), waited for until ready, stopped with its whole process
group; and the one background server that `start` leaves and `stop` ends."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

from .catalog import DEFAULT_ENGINE, ENGINES, MODELS, cache_dir
from .fetching import installed, prepare, say

# how much of the server's own error a one-line message quotes
REASON_CHARS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def state_file() -> str:
    """Where `start` notes the server it left running."""
    return os.path.join(cache_dir(), "server.json")


# the environment variable that tells a command run beside the server how it was started
CONFIG_VAR = "LALM_SERVER_CONFIG"


class LocalServer:
    """An engine's server process on 127.0.0.1, stopped on every way out of `with`.

    extra: arguments for the engine, after the ones lalmpipe gives it (for llama-server,
    e.g. ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on"]; a later -c overrides ctx)."""

    def __init__(self, model: str | None = None, ctx: int | None = None, extra: list[str] | None = None,
                 log: str | None = None, port: int | None = None, engine: str = DEFAULT_ENGINE):
        self.engine = ENGINES[engine]
        if ctx and not self.engine.takes_ctx:
            raise SystemExit(f"localserver: error: {engine} has no context size setting (and enforces none)")
        self.model = MODELS[model or self.engine.default_model]
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.served_name = self.engine.served_name(self.model)
        self.extra = list(extra or [])
        self.ctx = ctx
        self.cmd = [*self.engine.command(self.model, self.port, ctx), *self.extra]
        self.log = log or os.path.join(cache_dir(), f"{self.engine.name}-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    def config(self) -> dict:
        """How this server is started, for the run record (lalm-chat reads it from CONFIG_VAR):
        the engine, the model file and its sha256, every argument, the window asked for."""
        return {"base_url": self.base_url, "engine": self.engine.title, "model": self.model.alias,
                "model_file": self.model.file, "model_sha256": self.model.sha256, "ctx": self.ctx,
                "extra_args": self.extra, "command": [os.path.basename(self.cmd[0]), *self.cmd[1:]],
                "kv_cache_mib": kv_cache_mib(self.log)}

    def start(self) -> "LocalServer":
        if not (installed(self.engine) and os.path.exists(self.engine.model_path(self.model))):
            make = "make server-bin" if self.engine.name == DEFAULT_ENGINE else f"make server ENGINE={self.engine.name}"
            raise SystemExit(f"localserver: error: no {self.engine.name} or {self.model.alias} yet: "
                             f"'{make}' installs them")
        if self.engine.ready_s >= 5:
            say(f"starting {self.engine.title} (about {self.engine.ready_s:g} s)")
        os.makedirs(os.path.dirname(self.log), exist_ok=True)
        with open(self.log, "w") as fp:
            # its own process group: vLLM's workers are stopped with it
            self.proc = subprocess.Popen(self.cmd, stdout=fp, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=dict(os.environ, **dict(self.engine.env)))
        t = time.monotonic()
        try:
            self._wait_ready(self.proc, max(60.0, 8 * self.engine.ready_s))
        except BaseException:   # Ctrl-C while it loads included: never leave it running
            self.stop()
            raise
        if self.engine.ready_s >= 5:
            say(f"{self.engine.program} ready in {time.monotonic() - t:.0f} s")
        return self

    def _wait_ready(self, proc: subprocess.Popen, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(self._exited(proc.returncode))
            if _healthy(self.port, self.engine.ready_path):
                return
            time.sleep(0.1)
        raise SystemExit(f"localserver: error: {self.engine.name} not ready after {timeout_s:g} s; see {self.log}")

    def _exited(self, status: int) -> str:
        """One line on a server that ended before it was ready: with what, why (its own words), its log."""
        given = f" (given {' '.join(self.extra)})" if self.extra else ""
        return (f"localserver: error: {self.engine.program}{given} exited with status {status} "
                f"before it was ready: {exit_reason(self.log)}; see {self.log}")

    def stop(self) -> None:
        if self.proc:       # its group too when it has exited on its own: workers may be left
            stop_group(self.proc.pid)
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# llama-server: "llama_kv_cache: size =   23.91 MiB (  2048 cells,  30 layers, ...), K (q8_0): ..."
KV_CACHE_SIZE = re.compile(r"llama_kv_cache: size =\s*([0-9.]+) MiB")


def kv_cache_mib(log: str) -> float | None:
    """The memory the server's log says its KV cache took, in MiB (None where it says none:
    llama-server says it at log verbosity 4, `-lv 4`, which its default of 3 does not reach;
    verbosity 4 costs the first token a few milliseconds, so it is the user's choice)."""
    try:
        with open(log, errors="replace") as fp:
            found = KV_CACHE_SIZE.findall(fp.read(1 << 20))
    except OSError:
        return None
    return sum(float(x) for x in found) if found else None


def exit_reason(log: str) -> str:
    """The first line of a server's log that speaks of an error (else its last line), shortened."""
    try:
        with open(log, errors="replace") as fp:
            lines = [line.strip() for line in fp if line.strip()]
    except OSError:
        return "no log"
    if not lines:
        return "nothing in its log"
    line = next((x for x in lines if "error" in x.lower()), lines[-1])
    return line if len(line) <= REASON_CHARS else line[:REASON_CHARS - 1] + "…"


def stop_group(pid: int, grace_s: float = 10.0, signum: int = signal.SIGTERM) -> bool:
    """Signal the process group a process leads (a server, or the command run beside
    one), SIGKILL it if it outlives grace_s; False if it was gone already."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        _reap(pid)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _reap(pid: int) -> None:
    """Collect our own child once it exits, so its group can disappear."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _healthy(port: int, path: str = "/health") -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def start_background(engine: str, model: str | None, ctx: int | None, port: int | None,
                     extra: list[str] | None = None) -> LocalServer:
    """Start a server that outlives this process, in place of the one started before."""
    # its port is chosen while the previous server still holds its own: a new one
    srv = LocalServer(model, ctx=ctx, extra=extra, port=port, engine=engine)
    prepare(srv.engine, srv.model)
    stop_background()
    proc = srv.start().proc
    assert proc is not None     # started, or start() raised
    with open(state_file(), "w") as fp:
        json.dump({"pid": proc.pid, "port": srv.port, "base_url": srv.base_url, "engine": engine,
                   "model": srv.served_name, "command": srv.cmd, "log": srv.log}, fp)
    return srv


def stop_background() -> str | None:
    """Stop the server `start` left running; the name of its engine, or None if none was."""
    try:
        with open(state_file()) as fp:
            state = json.load(fp)
    except (OSError, ValueError):
        return None
    os.unlink(state_file())
    return state.get("engine", DEFAULT_ENGINE) if stop_group(state["pid"]) else None
