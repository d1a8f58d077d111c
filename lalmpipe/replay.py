"""lalm-replay: serve a recording back as an OpenAI-compatible server.

Usage:
    lalm-replay RECORDING.jsonl [--port N] [--host 127.0.0.1] [--speed X]

Answers each `POST /v1/chat/completions` with the recorded request that asked
the same thing: the same questions, in the same order, as the conversation's
user messages (a standing rule or a cold marker in front of the first aside),
whether a turn or a probe. A request sent again gets the same answer again, a
second run the same answers as the first, and a resumed run the answers of the
turns it goes on with; a request the recording does not hold gets HTTP 404
naming its prompt. Each answer has the same events, byte-exact, at the
recorded offsets from the moment the request arrived (divided by --speed;
--speed 0 sends at once). A recorded failure is replayed as it was: its HTTP
status and body, the stream cut where it was cut, or a stall (the client's
timeout) held open with nothing more sent. The server tells about itself what
the recorded one told lalm-chat (its models, its window, its software: `GET
/v1/models`, llama.cpp's `/props`, LM Studio's `/api/v0/models`, Ollama's
`/api/show`), so a replayed run's record names the same server.

Example:
    lalm-replay examples/smollm2.jsonl --port 8800 &
    lalm-prompts --num-rounds 6 | lalm-chat --base-url http://127.0.0.1:8800/v1 \\
        | lalm-metrics | lalm-report
"""
from __future__ import annotations

import argparse
import errno
import json
import select
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
from .history import exchanges
from .records import Probe, Run, Server, Turn
from .signals import interrupt, on_stop
from .vocab import ErrorKind
from .sse import encode_event

PROG = "lalm-replay"
STALL_POLL_S = 0.2   # how soon a held stall notices that the server is closing
QUOTED_CHARS = 60    # of a prompt named in an error
# why a listening socket was refused, in words (other reasons: the system's own, lower-cased)
BIND_REASONS: dict[int | None, str] = {errno.EADDRINUSE: "address already in use",
                                       errno.EADDRNOTAVAIL: "not an address of this machine"}


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
    if kind == ErrorKind.TIMEOUT:   # the client stopped waiting for a server gone quiet
        return Script(status=rec.http_status, events=events, end="stall")
    if rec.http_status is None:
        return Script(end="reset")
    cut = kind in (ErrorKind.STREAM, ErrorKind.INTERRUPTED)
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


def server_routes(server: Server, model: str) -> dict:
    """Answer what lalm-chat's preflight asks (lalmpipe.serverinfo) as the recorded server did,
    so that it learns the same: the models, then the window where that server tells it."""
    window = server.context_window
    routes = models_routes(server.models or [model])
    if server.software == "vllm" and window:
        for entry in routes["/v1/models"]["data"]:
            if entry["id"] == model:
                entry["max_model_len"] = window
    elif server.software == "llama.cpp" and window:
        routes["/props"] = {"default_generation_settings": {"n_ctx": window},
                            "build_info": server.build, "total_slots": server.total_slots}
    elif server.software == "lm-studio" and window:
        routes["/api/v0/models"] = {"data": [{"id": model, "loaded_context_length": window,
                                              "max_context_length": server.max_context_length}]}
    elif server.software == "ollama":
        trained = {"general.context_length": server.trained_context} if server.trained_context else {}
        routes["/api/show"] = {"model_info": trained, "parameters": f"num_ctx {window}" if window else ""}
    return routes


class ReplayServer(ThreadingHTTPServer):
    """An HTTP server on loopback that answers chat requests from scripts."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer, model: str = "replay", host="127.0.0.1", port=0, speed=1.0, routes=None):
        self.closing = threading.Event()  # before binding: a failed bind closes the server
        super().__init__((host, port), _Handler)
        self.answer = answer              # (index, request body) -> Script
        self.speed = speed
        # path -> JSON, GET or POST
        self.routes = {**models_routes([model]), "/health": {"status": "ok"}, **(routes or {})}
        self._served = 0
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        if isinstance(host, (bytes, bytearray)):
            host = host.decode()
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
    server: ReplayServer     # the server that made the handler (socketserver types it as BaseServer)

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
            assert script.status is not None, "a scripted body goes with a status"
            return self._send(script.status, script.body, script.headers or None)
        if script.status is not None:
            self._stream(script.status, script, t_arrival)
        if script.end == "stall":
            return self._hold()
        if script.end == "cut":
            # FIN, not RST: what was sent still arrives, then the body ends unfinished
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_WR)
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _stream(self, status: int, script: Script, t_arrival: float) -> None:
        self.send_response(status)
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


Key = tuple[str, ...]  # the questions a conversation had asked, in order, the request's own last


class Recording:
    """The recorded requests, turns and probes, each under the questions its conversation had asked."""

    def __init__(self, run: Run | None, requests: list[tuple[Key, Turn | Probe]]):
        self.run = run
        self.requests = requests
        self._by_depth: dict[int, list[tuple[Key, Turn | Probe]]] = {}
        for key, rec in requests:
            self._by_depth.setdefault(len(key), []).append((key, rec))

    def answering(self, asked: list[str]) -> Turn | Probe | None:
        """The recorded request that asked `asked` (a request's user messages), or None."""
        found = None
        for key, rec in self._by_depth.get(len(asked), ()):
            if all(map(same_question, asked, key, range(len(key)))):
                found = rec     # the last one: a turn redone on --resume, not its interrupted try
        return found

    def not_held(self, asked: list[str]) -> str:
        """Say that no recorded request asked `asked`, and where the recording asked its last question."""
        text = asked[-1] if asked else ""
        quoted = text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS] + "…"
        where = sorted({len(key) - 1 for key, _ in self.requests
                        if same_question(text, key[-1], len(asked) - 1)})
        after = (f" after {len(asked) - 1} earlier prompts (the recording asked it after "
                 f"{', '.join(map(str, where))})" if where else "")
        return f"no recorded turn answers the prompt '{quoted}'{after}"


def same_question(sent: str, recorded: str, place: int) -> bool:
    """Whether a user message asks a recorded question: the first may carry a standing
    rule ("RULE\n\nprompt") or a cold marker ("[run/turn]\n") in front."""
    return sent == recorded or (place == 0 and sent.endswith("\n" + recorded))


def asked_in(body: dict) -> list[str]:
    """The user messages of a chat request, in order."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        messages = []
    return [c if isinstance(c, str) else json.dumps(c) for c in
            (m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user")]


class Replayer:
    """Answer each request with the recorded one that asked the same; 404 when none did."""

    def __init__(self, recording: Recording, stderr):
        self.recording = recording
        self.stderr = stderr

    def __call__(self, index: int, request: dict) -> Script:
        asked = asked_in(request)
        rec = self.recording.answering(asked)
        if rec is not None:
            return script_from_record(rec)
        message = self.recording.not_held(asked)
        print(f"{PROG}: request {index + 1}: {message}", file=self.stderr, flush=True)
        body = {"error": {"message": message, "type": "not_recorded"}}
        return Script(status=404, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def load_recording(inputs, stdin) -> Recording:
    """Read the recorded requests, each under what its conversation had asked when it was
    sent (the history rebuilt as lalm-chat --resume rebuilds it), and the first run record."""
    run: Run | None = None
    requests: list[tuple[Key, Turn | Probe]] = []
    asked: dict[str, Key] = {}    # run id -> the questions its conversation has asked
    for item in read_records(inputs, stdin, consumes={"turn", "probe", "run"}, passes={"prompt", "metrics"}):
        rec = item.record
        if isinstance(rec, Run):
            run = run or rec
        elif isinstance(rec, Probe):
            requests.append(((*asked.get(rec.run_id, ()), rec.asked), rec))
        elif isinstance(rec, Turn):
            before = asked.get(rec.run_id, ())
            requests.append(((*before, *(ex.prompt.text for ex in rec.skipped), rec.prompt.text), rec))
            # the question enters the history only if its answer did
            asked[rec.run_id] = (*before, *(ex.prompt.text for ex in exchanges(rec, False)))
    if not any(isinstance(r, Turn) for _, r in requests):
        raise InputError(f"{inputs[0] if inputs else 'stdin'}: no turn records to replay")
    return Recording(run, requests)


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
    recording = load_recording(args.inputs, stdin)
    run = recording.run
    model = (run and run.model) or "replay"
    try:
        server = ReplayServer(Replayer(recording, stderr), model=model, host=args.host, port=args.port,
                              speed=args.speed, routes=server_routes(run.server if run else Server(), model))
    except OSError as e:
        reason = BIND_REASONS.get(e.errno) or (e.strerror or str(e)).lower()
        raise InputError(f"cannot listen on {args.host}:{args.port}: {reason}") from None
    probes = sum(isinstance(r, Probe) for _, r in recording.requests)
    what = f"{len(recording.requests) - probes} turns" + (f" and {probes} probes" if probes else "")
    try:
        # a replay has no end of its own: whatever stops it interrupts it (exit 130)
        with on_stop(interrupt):
            print(f"{PROG}: replaying {what} at {server.base_url} (speed {args.speed:g}); Ctrl-C stops",
                  file=stderr, flush=True)
            server.serve_forever()
    finally:
        server.server_close()
    return ExitCode.OK


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    return run_command(PROG, build_parser(), argv, stdin, stdout, stderr, work)
