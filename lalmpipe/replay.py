"""lalm-replay: serve a recording back as an OpenAI-compatible server.

Usage:
    lalm-replay RECORDING.jsonl [--port N] [--host 127.0.0.1] [--speed X]

Answers the k-th `POST /v1/chat/completions` with the k-th recorded turn: the
same events, byte-exact, at the recorded offsets from the moment the request
arrived (divided by --speed; --speed 0 sends at once). A recorded failure is
replayed as it was: its HTTP status and body, or the stream cut where it was
cut. `GET /v1/models` lists the recorded model.

Example:
    lalm-replay examples/smollm2.jsonl --port 8800 &
    lalm-prompts --num-rounds 6 | lalm-chat --base-url http://127.0.0.1:8800/v1 \\
        | lalm-metrics | lalm-report
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from .jsonl import (ExitCode, InputError, add_common_args, new_parser, non_negative_float,
                    port_number, read_records, run_command)
from .records import Run, Turn
from .sse import encode_event

PROG = "lalm-replay"


@dataclass
class Script:
    """One scripted answer: a status, then events at offsets, then how it ends.

    `end` is "close" (a complete response), "cut" (the connection dropped
    mid-stream) or "reset" (dropped before any response at all).
    """
    status: int = 200
    events: list = field(default_factory=list)       # [(t_s, bytes)]
    body: bytes | None = None                        # a non-streamed answer
    headers: dict = field(default_factory=dict)
    end: str = "close"


def script_from_turn(turn: Turn) -> Script:
    """Turn a recorded turn back into what the server sent."""
    error = turn.error
    if turn.http_status and turn.http_status != 200:
        body = (error and error.body) or json.dumps({"error": {"message": error and error.message}})
        return Script(status=turn.http_status, body=body.encode("utf-8"),
                      headers={"Content-Type": "application/json"})
    if turn.http_status is None:
        return Script(end="reset")
    events = [(c[0], encode_event(c[1], c[2] if len(c) > 2 else "message")) for c in turn.chunks]
    cut = error is not None and error.kind in ("stream", "interrupted", "timeout")
    return Script(events=events, end="cut" if cut else "close")


def pace_until(target: float) -> None:
    """Sleep, then spin the last millisecond: time.sleep alone overshoots."""
    while True:
        left = target - time.perf_counter()
        if left <= 0:
            return
        if left > 0.0015:
            time.sleep(left - 0.001)


class ScriptedServer(ThreadingHTTPServer):
    """An HTTP server on loopback that answers chat requests from a script."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer, host="127.0.0.1", port=0, speed=1.0, models=("replay",),
                 routes=None, on_request=None):
        super().__init__((host, port), _Handler)
        self.answer = answer              # (index, request body) -> Script
        self.speed = speed
        self.models = list(models)
        self.routes = routes or {}  # path -> JSON document, GET or POST (/props, /api/show)
        self.requests: list[dict] = []
        self.on_request = on_request
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def next_script(self, body: dict, headers: dict, target: str) -> Script:
        """Note a chat request (`target` is its path and query) and script its answer."""
        request = {"body": body, "headers": headers, "target": target}
        with self._lock:
            index = len(self.requests)
            self.requests.append(request)
        if self.on_request:
            self.on_request(request)
        return self.answer(index, body)

    def start(self) -> "ScriptedServer":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: stderr belongs to the command
        pass

    def _route(self) -> str:
        # a client may carry a key in the query; like a real server, routing ignores it
        return urlsplit(self.path).path.rstrip("/")

    def do_GET(self):
        path = self._route()
        if path in ("/v1/models", "/models"):
            doc = {"object": "list", "data": [{"id": m, "object": "model"} for m in self.server.models]}
        elif path == "/health":
            doc = {"status": "ok"}
        elif path in self.server.routes:
            doc = self.server.routes[path]
        else:
            return self._send(404, json.dumps({"error": {"message": "not found"}}).encode())
        self._send(200, json.dumps(doc).encode())

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        t_arrival = time.perf_counter()
        path = self._route()
        if path in self.server.routes:
            return self._send(200, json.dumps(self.server.routes[path]).encode())
        if not path.endswith("/chat/completions"):
            return self._send(404, b'{"error":{"message":"not found"}}')
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._send(400, b'{"error":{"message":"invalid JSON body"}}')
        headers = {k.lower(): v for k, v in self.headers.items()}
        script = self.server.next_script(body, headers, self.path)
        try:
            self._play(script, t_arrival)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _play(self, script: Script, t_arrival: float) -> None:
        if script.end == "reset":
            self._reset()
            return
        if script.body is not None:
            return self._send(script.status, script.body, script.headers or None)
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
        if script.end == "cut":
            # FIN, not RST: what was sent still arrives, then the body ends unfinished
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_WR)
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _reset(self) -> None:
        """Drop the connection at once (an RST), as a crashed server does."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class Replayer:
    """Answer the k-th request with the k-th recorded turn; note prompt mismatches."""

    def __init__(self, turns: list[Turn], stderr):
        self.turns = turns
        self.stderr = stderr

    def __call__(self, index: int, body: dict) -> Script:
        if index >= len(self.turns):
            print(f"{PROG}: request {index + 1}: the recording has only {len(self.turns)} turns",
                  file=self.stderr, flush=True)
            msg = {"error": {"message": f"recording exhausted after {len(self.turns)} turns",
                             "type": "replay_exhausted"}}
            return Script(status=410, body=json.dumps(msg).encode())
        turn = self.turns[index]
        users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
        sent = users[-1].get("content") if users else ""
        # a standing rule may ride in front of the first prompt
        if not str(sent).endswith(turn.prompt.text or "\0"):
            print(f"{PROG}: request {index + 1}: last user message is not the recorded "
                  f"prompt {turn.prompt.id} (replaying turn {turn.turn} anyway)",
                  file=self.stderr, flush=True)
        return script_from_turn(turn)


def load_turns(inputs, stdin) -> tuple[list[Turn], str | None]:
    turns, model = [], None
    for item in read_records(inputs, stdin, consumes={"turn", "run"},
                             passes={"prompt", "metrics", "probe"}):
        if isinstance(item.record, Run):
            model = model or item.record.model
        elif isinstance(item.record, Turn):
            turns.append(item.record)
    if not turns:
        raise InputError(f"{inputs[0] if inputs else 'stdin'}: no turn records to replay")
    return turns, model


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
    turns, model = load_turns(args.inputs, stdin)
    server = ScriptedServer(Replayer(turns, stderr), host=args.host, port=args.port,
                            speed=args.speed, models=[model or "replay"])
    _stop_on_term(server)
    print(f"{PROG}: replaying {len(turns)} turns at {server.base_url} "
          f"(speed {args.speed:g}); Ctrl-C stops", file=stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return ExitCode.OK


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    return run_command(PROG, build_parser(), argv, stdin, stdout, stderr, work)


def _stop_on_term(server) -> None:
    def handler(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
