"""make perf: how faithful lalm-chat's clock is and how cheap its stages are.

Prints a table of figures; it asserts nothing (goals are in docs/PERFORMANCE.md).
    python tests/perf.py [--quick]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from lalmpipe.reasoning import read_stream  # noqa: E402
from scripted import ForkedServer, stream  # noqa: E402

RATES = (50, 500, 5000)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


# ---- 1 and 2: timing fidelity and client cost, against a paced server ----

def lalm_chat_turn(transport, body):
    """What lalm-chat does for one turn: stream, then read what came."""
    cpu0 = time.process_time()
    att = transport.stream(body, None)
    cpu_stream = time.process_time() - cpu0
    read_stream(att.chunks)
    cpu_all = time.process_time() - cpu0
    return [c[0] for c in att.chunks], cpu_stream, cpu_all


def naive_turn(client, body):
    """The original single-file benchmark: time chunks as the SDK's parsed iterator yields them."""
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    times = []
    for _chunk in client.chat.completions.create(**body):
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    return times, cpu, cpu


def token_times(times, n_tokens):
    """Times of the token chunks: after the role chunk, before finish/usage/[DONE]."""
    return times[1:1 + n_tokens]


def fidelity(rate: int, turns: int, n_tokens: int) -> dict:
    import openai
    from lalmpipe.transport import Transport

    ttft = 0.1
    made = [stream("plain", n_content=n_tokens, ttft_s=ttft, rate_tps=rate, prompt_tokens=20)
            for _ in range(2 * turns)]
    scheduled = [ttft + i / rate for i in range(n_tokens)]
    out = {}
    with ForkedServer(lambda i, b: made[i][0]) as srv:
        transport = Transport(srv.base_url, "x", 60)
        transport.get_json("/models")          # lalm-chat's preflight
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "stream_options": {"include_usage": True}}
        for name, run in (("lalm-chat", lambda: lalm_chat_turn(transport, body)),
                          ("naive", lambda: naive_turn(client, body))):
            errs, lags_first, lags_last, tps_errs, cpu_s, cpu_all, chunks = [], [], [], [], 0.0, 0.0, 0
            for _ in range(turns):
                times, c_stream, c_all = run()
                tok = token_times(times, n_tokens)
                errs.append(abs(tok[0] - ttft))
                tps = (n_tokens - 1) / (tok[-1] - tok[0])
                tps_errs.append(abs(tps - rate) / rate)
                lag = [t - s for t, s in zip(tok, scheduled)]
                k = max(1, n_tokens // 10)
                lags_first.append(statistics.median(lag[:k]))
                lags_last.append(statistics.median(lag[-k:]))
                cpu_s, cpu_all, chunks = cpu_s + c_stream, cpu_all + c_all, chunks + len(times)
            out[name] = {"ttft_err_med_ms": statistics.median(errs) * 1e3, "ttft_err_max_ms": max(errs) * 1e3,
                         "tps_err_med_pct": statistics.median(tps_errs) * 100,
                         "tps_err_max_pct": max(tps_errs) * 100,
                         "lag_growth_ms": (statistics.median(lags_last) - statistics.median(lags_first)) * 1e3,
                         "cpu_us_per_chunk": cpu_s / chunks * 1e6, "cpu_all_us_per_chunk": cpu_all / chunks * 1e6}
        transport.close()
    return out


def floors(n_tokens: int = 3000, rate: int = 5000) -> dict:
    """CPU per chunk of what lalm-chat stands on: httpx's raw iterator, and a bare socket."""
    import socket
    from lalmpipe.transport import Transport

    made = [stream("plain", n_content=n_tokens, ttft_s=0.05, rate_tps=rate)[0] for _ in range(8)]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    out = {"lalm-chat (stream only)": [], "httpx iter_raw, nothing else": [], "bare socket recv": []}
    with ForkedServer(lambda i, b: made[i]) as srv:
        t = Transport(srv.base_url, "x", 60)
        t.get_json("/models")
        host, port = srv.base_url.split("//")[1].split("/")[0].split(":")
        payload = json.dumps(body).encode()
        for _ in range(2):
            c0 = time.process_time()
            att = t.stream(body, None)
            out["lalm-chat (stream only)"].append((time.process_time() - c0) / len(att.chunks))
            c0 = time.process_time()
            with t.client.chat.completions.with_streaming_response.create(
                    model="m", messages=body["messages"], extra_body={"stream": True}) as resp:
                for _raw in resp.http_response.iter_raw():
                    time.perf_counter_ns()
            out["httpx iter_raw, nothing else"].append((time.process_time() - c0) / (n_tokens + 4))
            c0 = time.process_time()
            with socket.create_connection((host, int(port))) as s:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                          % len(payload) + payload)
                while True:
                    data = s.recv(65536)
                    time.perf_counter_ns()
                    if not data or data.endswith(b"0\r\n\r\n"):
                        break
            out["bare socket recv"].append((time.process_time() - c0) / (n_tokens + 4))
        t.close()
    return {k: min(v) * 1e6 for k, v in out.items()}


# ---- 3: offline speed and memory of lalm-metrics ----

CHUNK = ('{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"%s"}}],"created":1795784954,'
         '"id":"chatcmpl-obdBxWObjfyRxSEjJ4n9gDAIZSo0ii5g","model":"smollm2-135m",'
         '"system_fingerprint":"b0-unknown","object":"chat.completion.chunk"}')


def write_recording(path: str, turns: int, chunks: int) -> None:
    words = [" the", " model", " audio", " codec", " token", " window", " mel", " bass"]
    with open(path, "w") as fp:
        fp.write(json.dumps({"kind": "run", "v": 1, "run_id": "perf", "started_at": "t", "tool": {},
                             "base_url": "u", "model": "m"}) + "\n")
        for n in range(1, turns + 1):
            cs = [[round(0.1 + i * 0.005, 6), CHUNK % words[i % 8]] for i in range(chunks)]
            cs.append([cs[-1][0] + 0.001, json.dumps({"choices": [], "usage": {
                "prompt_tokens": 100 * n, "completion_tokens": chunks}})])
            cs.append([cs[-1][0] + 0.001, "[DONE]"])
            fp.write(json.dumps({"kind": "turn", "v": 1, "run_id": "perf", "turn": n,
                                 "prompt": {"id": n, "tier": "expert", "text": "question %d" % n},
                                 "sent_at": "t", "status": "ok", "http_status": 200, "error": None,
                                 "attempts": 1, "chunks": cs, "content": "", "reasoning": ""}) + "\n")


def json_floor(path: str) -> float:
    t = time.perf_counter()
    with open(path, "rb") as fp:
        for line in fp:
            rec = json.loads(line)
            for c in rec.get("chunks", ()):
                json.loads(c[1]) if c[1] != "[DONE]" else None
    return time.perf_counter() - t


def metrics_in_child(path: str, copies: int = 1) -> tuple[float, int]:
    """Run lalm-metrics in a fresh process; return its wall time and peak RSS (KiB)."""
    code = ("import sys, time, resource, io; sys.path.insert(0, %r); from lalmpipe import metrics;"
            "t=time.perf_counter(); rc=metrics.main(['-'] , sys.stdin, open('/dev/null','w'), sys.stderr);"
            "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)") % ROOT
    feeder = subprocess.Popen(["cat"] + [path] * copies, stdout=subprocess.PIPE)
    out = subprocess.run([sys.executable, "-c", code], stdin=feeder.stdout, capture_output=True, text=True)
    feeder.wait()
    wall, rss = out.stdout.split()
    return float(wall), int(rss)


def offline(turns: int, chunks: int, mem_chunks: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        big = os.path.join(tmp, "big.jsonl")
        write_recording(big, turns, chunks)
        floor = min(json_floor(big) for _ in range(2))
        wall = min(metrics_in_child(big)[0] for _ in range(2))
        small = os.path.join(tmp, "small.jsonl")
        write_recording(small, turns, mem_chunks)
        _, rss1 = metrics_in_child(small, 1)
        _, rss10 = metrics_in_child(small, 10)
        n = turns * (chunks + 2)
        return {"chunks": n, "mb": os.path.getsize(big) / 1e6, "wall_s": wall, "floor_s": floor,
                "chunks_per_s": n / wall, "ratio": wall / floor, "rss_1x_mb": rss1 / 1024,
                "rss_10x_mb": rss10 / 1024}


# ---- 4: start-up ----

def startup() -> dict:
    out = {}
    for cmd in ("prompts", "chat", "metrics", "report", "replay"):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run([sys.executable, os.path.join(ROOT, "bin", f"lalm-{cmd}"), "--help"],
                           capture_output=True, check=True)
            times.append(time.perf_counter() - t)
        code = ("import sys, io; sys.path.insert(0, %r); from lalmpipe import %s as m;"
                "m.main(['--help'], io.BytesIO(), io.StringIO(), io.StringIO()); print('openai' in sys.modules)"
                ) % (ROOT, cmd)
        imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
        out[f"lalm-{cmd}"] = (min(times) * 1e3, imported == "True")
    fixture = os.path.join(HERE, "fixtures", "llama.in.jsonl")
    code = ("import sys, io; sys.path.insert(0, %r); from lalmpipe import metrics, report;"
            "o=io.StringIO(); metrics.main([%r], io.BytesIO(), o, io.StringIO());"
            "report.main([], io.BytesIO(o.getvalue().encode()), io.StringIO(), io.StringIO());"
            "print('openai' in sys.modules)") % (ROOT, fixture)
    out["metrics+report on a recording"] = (None, subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True")
    return out


# ---- 5: the HTML page of a full run ----

def page(turns: int = 231, answer_chars: int = 6000) -> dict:
    """Render a whole run with long answers as one page; open it in headless Chromium."""
    from browser import have_chromium, load_time_s
    from synthetic import synthetic_run

    from lalmpipe import report
    metrics_jsonl, recording_jsonl = synthetic_run(turns, answer_chars)
    with tempfile.TemporaryDirectory() as tmp:
        recording, html = os.path.join(tmp, "run.jsonl"), os.path.join(tmp, "run.html")
        with open(recording, "w") as fp:
            fp.write(recording_jsonl)
        t = time.perf_counter()
        with open(html, "w") as out:
            report.main(["--format", "html", "--texts", recording, "-q"],
                        io.BytesIO(metrics_jsonl.encode()), out, sys.stderr)
        render_s = time.perf_counter() - t
        loads = [load_time_s(html) for _ in range(3)] if have_chromium() else []
        return {"render_s": render_s, "kib": os.path.getsize(html) / 1024,
                "load_s": min((l[0] for l in loads), default=None),
                "browser_wall_s": min((l[1] for l in loads), default=None),
                "rows_seen": min((l[2] for l in loads), default=None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller runs, for a first look")
    args = p.parse_args()
    turns, n_tok = (3, 300) if args.quick else (8, 1000)
    print(f"machine: {machine()}\n")
    print("1-2. timing fidelity and client cost (paced server on 127.0.0.1, "
          f"{turns} turns x {n_tok} tokens per rate, turn 1 included)")
    print(f"{'rate tok/s':>10} {'client':>10} {'TTFT err med/max ms':>20} {'decode err med/max %':>21}"
          f" {'lag growth ms':>14} {'CPU us/chunk stream':>20} {'incl. parse':>12}")
    for rate in RATES:
        for name, r in fidelity(rate, turns, n_tok if rate > 50 else max(50, n_tok // 10)).items():
            print(f"{rate:>10} {name:>10} {r['ttft_err_med_ms']:>9.2f} / {r['ttft_err_max_ms']:<8.2f}"
                  f" {r['tps_err_med_pct']:>9.2f} / {r['tps_err_max_pct']:<9.2f} {r['lag_growth_ms']:>14.2f}"
                  f" {r['cpu_us_per_chunk']:>20.1f} {r['cpu_all_us_per_chunk']:>12.1f}")
    print("\n   what the client stands on, at 5,000 tok/s (CPU us per chunk, best of 2):")
    for name, us in floors().items():
        print(f"   {name:<32} {us:6.1f}")
    turns3, chunks3 = (40, 2000) if args.quick else (231, 2000)
    o = offline(turns3, chunks3, 200)
    print(f"\n3. lalm-metrics offline: {turns3} turns x {chunks3} chunks ({o['mb']:.0f} MB)")
    print(f"   {o['wall_s']:.2f} s, {o['chunks_per_s']:,.0f} chunks/s; JSON-parsing floor {o['floor_s']:.2f} s;"
          f" ratio {o['ratio']:.2f}")
    print(f"   peak memory: {o['rss_1x_mb']:.1f} MB for {turns3} turns x 200 chunks, "
          f"{o['rss_10x_mb']:.1f} MB for ten times as many turns")
    print("\n4. start-up: wall time of --help (best of 5), and whether openai was imported")
    for name, (ms, imported) in startup().items():
        print(f"   {name:<32} {'' if ms is None else f'{ms:6.0f} ms'}   openai imported: {imported}")
    turns5 = 40 if args.quick else 231
    pg = page(turns5)
    print(f"\n5. lalm-report --format html: {turns5} turns, answers of 6,000 characters, with probes")
    print(f"   rendered in {pg['render_s']:.2f} s, {pg['kib']:,.0f} KiB")
    if pg["load_s"] is None:
        print("   headless Chromium: not installed (make test installs it)")
    else:
        print(f"   opens in headless Chromium in {pg['load_s']:.2f} s (load event, best of 3, "
              f"{pg['rows_seen']} turn rows seen; the whole browser run {pg['browser_wall_s']:.2f} s)")


if __name__ == "__main__":
    main()
