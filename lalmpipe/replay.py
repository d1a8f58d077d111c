"""lalm-replay: serve a recording back as an OpenAI-compatible server.

Usage:
    lalm-replay RECORDING.jsonl [--port N] [--host 127.0.0.1] [--speed X]

Answers each `POST /v1/chat/completions` with the next request of the
recording, in the order lalm-chat sent them: its turns and, after a turn, the
probes it asked (--probe-every). Each answer has the same events, byte-exact,
at the recorded offsets from the moment the request arrived (divided by
--speed; --speed 0 sends at once). A recorded failure is replayed as it was:
its HTTP status and body, the stream cut where it was cut, or a stall (the
client's timeout) held open with nothing more sent. `GET /v1/models` lists the
recorded model.

Example:
    lalm-replay examples/smollm2.jsonl --port 8800 &
    lalm-prompts --num-rounds 6 | lalm-chat --base-url http://127.0.0.1:8800/v1 \\
        | lalm-metrics | lalm-report
"""
from __future__ import annotations

import argparse
import contextlib
import json
import select
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from .cli import ExitCode, add_common_args, new_parser, non_negative_float, port_number, run_command
from .errors import InputError
from .jsonl import read_records
from .records import Probe, Run, Turn
from .sse import encode_event

PROG = "lalm-replay"
STALL_POLL_S = 0.2   # how soon a held stall notices that the server is closing


@dataclass
class Script:
    """One scripted answer: a status, then events at offsets, then how it ends.

    `end` is "close" (a complete response), "cut" (the connection dropped
    mid-stream), "stall" (nothing more sent, the connection held open; with no
    status, not even a response line) or "reset" (dropped before any response
    at all).
    """
    status: int | None = 200
    events: list = field(default_factory=list)       # [(t_s, bytes)]
    body: bytes | None = None                        # a non-streamed answer
    headers: dict = field(default_factory=dict)
    end: str = "close"


def script_from_record(rec: Turn | Probe) -> Script:
    """Turn a recorded request (a turn or a probe) back into what the server sent."""
    error = rec.error
    kind = error.kind if error else None
    if rec.http_status and rec.http_status != 200:
        body = (error and error.body) or json.dumps({"error": {"message": error and error.message}})
        return Script(status=rec.http_status, body=body.encode("utf-8"),
                      headers={"Content-Type": "application/json"})
    events = [(c[0], encode_event(c[1], c[2] if len(c) > 2 else "message")) for c in rec.chunks]
    if kind == "timeout":   # the client stopped waiting for a server gone quiet
        return Script(status=rec.http_status, events=events, end="stall")
    if rec.http_status is None:
        return Script(end="reset")
    cut = kind in ("stream", "interrupted")
    return Script(events=events, end="cut" if cut else "close")


def pace_until(target: float) -> None:
    """Sleep, then spin the last millisecond: time.sleep alone overshoots."""
    while True:
        left = target - time.perf_counter()
        if left <= 0:
            return
        if left > 0.0015:
            time.sleep(left - 0.001)


def models_routes(models) -> dict:
    """The model list, under a base URL with /v1 and without."""
    doc = {"object": "list", "data": [{"id": m, "object": "model"} for m in models]}
    return {"/v1/models": doc, "/models": doc}


class ReplayServer(ThreadingHTTPServer):
    """An HTTP server on loopback that answers chat requests from scripts."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer, model: str = "replay", host="127.0.0.1", port=0, speed=1.0):
        super().__init__((host, port), _Handler)
        self.answer = answer              # (index, request body) -> Script
        self.speed = speed
        self.routes = {**models_routes([model]), "/health": {"status": "ok"}}  # path -> JSON, GET or POST
        self.closing = threading.Event()
        self._served = 0
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def next_script(self, request: dict) -> Script:
        """Script the answer to a chat request: {body, headers, target (path and query)}."""
        with self._lock:
            index, self._served = self._served, self._served + 1
        return self.answer(index, request["body"])

    def server_close(self) -> None:
        self.closing.set()   # held stalls let their connections go
        super().server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: stderr belongs to the command
        pass

    def _route(self) -> str:
        # a client may carry a key in the query; like a real server, routing ignores it
        return urlsplit(self.path).path.rstrip("/")

    def do_GET(self):
        self._send_route(self._route())

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        t_arrival = time.perf_counter()
        path = self._route()
        if not path.endswith("/chat/completions"):
            return self._send_route(path)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._send(400, b'{"error":{"message":"invalid JSON body"}}')
        headers = {k.lower(): v for k, v in self.headers.items()}
        script = self.server.next_script({"body": body, "headers": headers, "target": self.path})
        try:
            self._play(script, t_arrival)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_route(self, path: str) -> None:
        if path not in self.server.routes:
            return self._send(404, b'{"error":{"message":"not found"}}')
        self._send(200, json.dumps(self.server.routes[path]).encode())

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _play(self, script: Script, t_arrival: float) -> None:
        if script.end == "reset":
            return self._reset()
        if script.body is not None:
            return self._send(script.status, script.body, script.headers or None)
        if script.status is not None:
            self._stream(script, t_arrival)
        if script.end == "stall":
            return self._hold()
        if script.end == "cut":
            # FIN, not RST: what was sent still arrives, then the body ends unfinished
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_WR)
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _stream(self, script: Script, t_arrival: float) -> None:
        self.send_response(script.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for k, v in script.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()
        speed = self.server.speed
        for t_s, data in script.events:
            if speed:
                pace_until(t_arrival + t_s / speed)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _hold(self) -> None:
        """Send nothing more, as a stalled server does, until the client hangs
        up or the server closes."""
        self.close_connection = True
        while not self.server.closing.is_set():
            if select.select([self.connection], [], [], STALL_POLL_S)[0]:
                return   # the client hung up (a stalled server would read nothing more anyway)

    def _reset(self) -> None:
        """Drop the connection at once (an RST), as a crashed server does."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class Replayer:
    """Answer the k-th request with the k-th recorded one, a turn or a probe; note mismatches."""

    def __init__(self, requests: list[Turn | Probe], stderr):
        self.requests = requests
        self.stderr = stderr

    def __call__(self, index: int, body: dict) -> Script:
        if index >= len(self.requests):
            print(f"{PROG}: request {index + 1}: the recording has only {len(self.requests)} requests",
                  file=self.stderr, flush=True)
            msg = {"error": {"message": f"recording exhausted after {len(self.requests)} requests",
                             "type": "replay_exhausted"}}
            return Script(status=410, body=json.dumps(msg).encode())
        rec = self.requests[index]
        users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
        mismatch = asked_otherwise(rec, str(users[-1].get("content")) if users else "")
        if mismatch:
            print(f"{PROG}: request {index + 1}: last user message is not {mismatch}",
                  file=self.stderr, flush=True)
        return script_from_record(rec)


def asked_otherwise(rec: Turn | Probe, sent: str) -> str | None:
    """Name what the recorded request asked, when the last user message `sent` is something else."""
    if isinstance(rec, Probe):
        if sent == rec.fact.question:
            return None
        return (f"the question of fact {rec.fact.id} "
                f"(replaying the probe after turn {rec.after_turn} anyway)")
    # a standing rule may ride in front of the first prompt
    if sent.endswith(rec.prompt.text or "\0"):
        return None
    return f"the recorded prompt {rec.prompt.id} (replaying turn {rec.turn} anyway)"


def load_requests(inputs, stdin) -> tuple[list[Turn | Probe], str | None]:
    """Read the recorded requests, turns and probes in the order they were sent, and the model."""
    requests, model = [], None
    for item in read_records(inputs, stdin, consumes={"turn", "probe", "run"}, passes={"prompt", "metrics"}):
        if isinstance(item.record, Run):
            model = model or item.record.model
        elif item.record is not None:
            requests.append(item.record)
    if not any(isinstance(r, Turn) for r in requests):
        raise InputError(f"{inputs[0] if inputs else 'stdin'}: no turn records to replay")
    return requests, model


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(PROG, "Serve a lalm-chat recording back as an OpenAI-compatible server.",
                   ["lalm-replay docs/examples/smollm2.jsonl --port 8800 &",
                    "lalm-prompts --num-rounds 8 | lalm-chat --base-url http://127.0.0.1:8800/v1 "
                    "| lalm-metrics | lalm-report"])
    p.add_argument("inputs", nargs="+", metavar="RECORDING", help="lalm-chat output (JSON Lines)")
    p.add_argument("--host", default="127.0.0.1", help="default: %(default)s (loopback only)")
    p.add_argument("--port", type=port_number, default=8800, help="default: %(default)s (0: any free port)")
    p.add_argument("--speed", type=non_negative_float, default=1.0,
                   help="divide recorded times by X (0: send at once; default: 1)")
    add_common_args(p)
    return p


def work(args, stdin, stdout, stderr) -> int:
    requests, model = load_requests(args.inputs, stdin)
    server = ReplayServer(Replayer(requests, stderr), model=model or "replay", host=args.host,
                          port=args.port, speed=args.speed)
    probes = sum(isinstance(r, Probe) for r in requests)
    what = f"{len(requests) - probes} turns" + (f" and {probes} probes" if probes else "")
    try:
        with _signals_interrupt():
            print(f"{PROG}: replaying {what} at {server.base_url} (speed {args.speed:g}); Ctrl-C stops",
                  file=stderr, flush=True)
            server.serve_forever()
    finally:
        server.server_close()
    return ExitCode.OK


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    return run_command(PROG, build_parser(), argv, stdin, stdout, stderr, work)


@contextlib.contextmanager
def _signals_interrupt():
    """Stop serving on Ctrl-C or SIGTERM as an interruption (exit 130).

    A replay has no end of its own, so whatever stops it interrupts it; SIGTERM
    counts as Ctrl-C, as in lalm-chat, which the README's "130 when
    interrupted" covers. SIGINT is set too, so that a replay started in the
    background of a script (SIGINT ignored) still stops on Ctrl-C.
    """
    def handler(signum, frame):
        raise KeyboardInterrupt
    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
