"""Streams in each real server dialect, on an exact schedule whose truth is known,
and the server that plays them."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

from lalmpipe import replay
from lalmpipe.replay import ReplayServer, Script, models_routes
from lalmpipe.sse import encode_event

# each of these is exactly one cl100k_base token, however many are joined
REASONING_WORD = " the"
CONTENT_WORD = " cat"

DIALECTS = ("plain", "think_inline", "reasoning_content", "reasoning", "vllm", "no_usage")


@dataclass
class Truth:
    ttft_s: float
    ttft_content_s: float
    rate_tps: float
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    content_tokens: int


def _chunk(delta: dict | None = None, finish=None, **extra) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                       "model": "scripted", "choices": choices, **extra})


def stream(dialect: str, n_reasoning: int = 0, n_content: int = 20, ttft_s: float = 0.2,
           rate_tps: float = 100.0, prompt_tokens: int = 50, cached: int = 0,
           finish: str = "stop") -> tuple[Script, Truth]:
    """Build a scripted answer: role chunk, token chunks every 1/rate s, usage, [DONE]."""
    if dialect in ("plain", "no_usage"):
        n_reasoning = 0
    dt = 1.0 / rate_tps
    events: list[tuple[float, str]] = [(max(ttft_s - 0.05, 0.001), _chunk({"role": "assistant", "content": None}))]
    t = ttft_s
    pieces = _pieces(dialect, n_reasoning, n_content)
    first_content = None
    for field_name, text in pieces:
        events.append((t, _chunk({field_name: text})))
        if text == CONTENT_WORD and first_content is None:
            first_content = t
        t += dt
    t_last = t - dt
    events.append((t_last + 0.0005, _chunk({}, finish=finish)))
    completion = n_reasoning + n_content
    if dialect == "think_inline" and n_reasoning:
        completion += 4     # the four tag chunks are tokens the server counts too
    if dialect != "no_usage":
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        extra = {}
        if dialect == "vllm":
            usage["completion_tokens_details"] = {"reasoning_tokens": n_reasoning}
        if dialect == "reasoning_content":
            extra["timings"] = {"cache_n": cached, "prompt_n": prompt_tokens - cached,
                                "prompt_ms": ttft_s * 1000, "predicted_n": completion}
        events.append((t_last + 0.001, _chunk(None, usage=usage, **extra)))
    events.append((t_last + 0.0015, "[DONE]"))
    script = Script(events=[(ts, encode_event(d)) for ts, d in events])
    return script, Truth(ttft_s=ttft_s, ttft_content_s=first_content, rate_tps=rate_tps,
                         prompt_tokens=prompt_tokens, completion_tokens=completion,
                         reasoning_tokens=n_reasoning, content_tokens=n_content)


def _pieces(dialect: str, n_reasoning: int, n_content: int) -> list[tuple[str, str]]:
    """One token per chunk; inline tags arrive split as real servers split them."""
    content = [("content", CONTENT_WORD)] * n_content
    if n_reasoning == 0:
        return content
    if dialect == "think_inline":
        # the tags are tokens too, but not reasoning text; the answer starts after "\n\n"
        return ([("content", "<thi"), ("content", "nk>")]
                + [("content", REASONING_WORD)] * n_reasoning
                + [("content", "</th"), ("content", "ink>\n\n")] + content)
    field_name = "reasoning" if dialect == "reasoning" else "reasoning_content"
    return [(field_name, REASONING_WORD)] * n_reasoning + content


def llama_cpp_python(n_content: int = 20, ttft_s: float = 0.05, rate_tps: float = 100.0,
                     pings: tuple[float, ...] = ()) -> Script:
    """An answer as llama-cpp-python's server streams it: JSON with spaces after `,` and `:`,
    the role chunk ~10 ms before the first token, no usage at all (it ignores
    include_usage), `[DONE]`, and `: ping - <datetime>` comments at the times in `pings`."""
    def chunk(delta, finish=None):
        return json.dumps({"id": "chatcmpl-0", "object": "chat.completion.chunk", "created": 1764445000,
                           "model": "smollm2-135m", "choices": [{"index": 0, "delta": delta,
                                                                 "logprobs": None, "finish_reason": finish}]})
    dt = 1.0 / rate_tps
    t_last = ttft_s + dt * (n_content - 1)
    events = [(ttft_s - 0.01, encode_event(chunk({"role": "assistant"})))]
    events += [(ttft_s + dt * i, encode_event(chunk({"content": CONTENT_WORD}))) for i in range(n_content)]
    events += [(t_last + 0.0005, encode_event(chunk({}, "stop"))), (t_last + 0.001, encode_event("[DONE]"))]
    events += [(t, b": ping - 2026-11-29 19:00:00.000000+00:00\r\n\r\n") for t in pings]
    return Script(events=sorted(events, key=lambda e: e[0]))


def sse(*events: tuple[float, str]) -> Script:
    """A script from raw (t, data) pairs."""
    return Script(events=[(t, encode_event(d)) for t, d in events])


# planted facts and a standing rule for the recall probes (lalm-chat --facts)
FACTS = {"rule": {"text": "End every answer with the word OVER.", "check": r"OVER\W*$"},
         "facts": [{"id": "tempo", "stated_in": 1, "question": "What tempo, in BPM?", "answer": "92 BPM"},
                   {"id": "bins", "stated_in": 2, "question": "How many mel bins?", "answer": "128"},
                   {"id": "later", "stated_in": 9, "question": "Never stated yet?", "answer": "7"}]}
FORGETS_AT = 1000   # the scripted model answers probes right below this many prompt tokens


def scripted_model(i, body):
    """Prompt tokens grow 100 a message; probes are answered right until FORGETS_AT;
    the rule is kept until the sixth user message."""
    messages = body["messages"]
    prompt_tokens = 100 * len(messages)
    question = messages[-1]["content"]
    fact = next((f for f in FACTS["facts"] if f["question"] == question), None)
    if fact:
        text = fact["answer"] if prompt_tokens < FORGETS_AT else "I am not sure, 60 maybe."
    else:
        users = sum(m["role"] == "user" for m in messages)
        text = "An answer. OVER" if users < 6 else "An answer without the word."
    return sse((0.01, json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})),
               (0.02, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5}})),
               (0.03, "[DONE]"))


class ScriptedServer(ReplayServer):
    """lalm-replay's server answering from any script, with the models and routes
    of a real server (/props, /api/show, ...), telling `on_request` each request."""

    def __init__(self, answer, on_request, models=("scripted",), routes=None, **kwargs):
        super().__init__(answer, model=models[0], **kwargs)
        self.routes.update({**models_routes(models), **(routes or {})})
        self.on_request = on_request

    def next_script(self, request: dict) -> Script:
        self.on_request(request)
        return super().next_script(request)


def deltas_script(deltas: list[dict], wait_s: float = 0.0) -> Script:
    """A role chunk, then one chunk a millisecond per delta after wait_s, the finish and [DONE]."""
    t = 0.02 + wait_s + 0.001 * len(deltas)
    return sse((0.01, _chunk({"role": "assistant"})),
               *((0.02 + wait_s + 0.001 * i, _chunk(d)) for i, d in enumerate(deltas)),
               (t, _chunk({}, finish="stop")), (t + 0.001, "[DONE]"))


HANGUP = "hangup"   # a Script end: the request is read, then the connection closed unanswered


class _Handler(replay._Handler):
    """The scripted server's handler, dropping connections as real servers do.

    With the server's `closes` set, every connection ends after one response:
    "announced" says so (`Connection: close`), "silent" just closes it. A script
    that ends in HANGUP closes the connection (a FIN) without a byte of answer:
    what a client sees when the server closed an idle kept-alive connection
    just as the request went out.
    """

    def handle_one_request(self):
        super().handle_one_request()
        if self.server.closes:
            self.close_connection = True

    def end_headers(self):
        if self.server.closes == "announced":
            self.send_header("Connection", "close")
        super().end_headers()

    def _play(self, script: Script, t_arrival: float) -> None:
        if script.end == HANGUP:
            self.close_connection = True
            return
        super()._play(script, t_arrival)


class ForkedServer:
    """A ScriptedServer in a child process, so its pacing never shares the
    client's interpreter lock: the timing truth stays the schedule.

    The child sends each request up a pipe before it answers it, and counts it;
    a thread here reads them. So `requests` holds every request a client has had
    an answer to, without waiting on a timeout, and stopping is at once.
    """

    def __init__(self, answer, closes: str | None = None, **kwargs):
        import multiprocessing

        self._ctx = multiprocessing.get_context("fork")
        self._told = self._ctx.Value("i", 0)       # requests the child has sent up the pipe
        self._sending = threading.Lock()          # the child's handler threads send one at a time
        self._arrived = threading.Condition()
        self._read_so_far: list[dict] = []        # by the reader thread
        self._requests: list[dict] = []           # handed out: it grows only when looked at
        self._server = ScriptedServer(answer, on_request=self._tell, **kwargs)
        self._server.RequestHandlerClass = _Handler
        self._server.closes = closes      # None, "announced" or "silent" (see _Handler)
        self.base_url = self._server.base_url

    def _serve(self) -> None:
        import os
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # a script that ends the child (os._exit) closes the port first: left to the exit,
        # the connection's close could come first, and a client's quick resend would land in
        # the dying listener's backlog and be reset instead of refused
        exit_now = os._exit

        def exit_port_first(code: int) -> None:
            self._server.socket.close()
            exit_now(code)
        os._exit = exit_port_first
        self._server.serve_forever()

    def _tell(self, request: dict) -> None:
        """In the child, before the request is answered: the whole request is in
        the pipe, and counted, even if the script then ends the child."""
        with self._sending:
            self._up.send(request)
            with self._told.get_lock():
                self._told.value += 1

    def _read(self) -> None:
        """Here, until the child is gone: every request it sends, kept in order."""
        try:
            while True:
                request = self._down.recv()
                with self._arrived:
                    self._read_so_far.append(request)
                    self._arrived.notify_all()
        except (EOFError, OSError):
            pass

    def _caught_up(self) -> bool:
        """Take every request the child has counted, once read here; whether any was new."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._read_so_far) >= self._told.value, timeout=10):
                raise TimeoutError(f"the scripted server counted {self._told.value} requests; "
                                   f"{len(self._read_so_far)} came up its pipe")
            new = self._read_so_far[len(self._requests):]
        self._requests.extend(new)
        return bool(new)

    @property
    def requests(self) -> list[dict]:
        """Every request answered or being answered so far, in the order they came."""
        if not self._caught_up():
            time.sleep(0.001)     # a caller polling for a request yet to come leaves the cores to the rest
        return self._requests

    def __enter__(self):
        # the pipe is made just before the child: no other child holds its end, so
        # the reader sees its end as soon as this child is gone
        self._down, self._up = self._ctx.Pipe(duplex=False)
        self._proc = self._ctx.Process(target=self._serve, daemon=True)
        self._proc.start()
        self._up.close()
        self._server.socket.close()   # only the child listens: if it dies, connections are refused
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc):
        self._caught_up()  # before the child goes
        self._proc.terminate()
        self._proc.join(5)
        self._reader.join(5)
        self._down.close()
        self._server.server_close()
