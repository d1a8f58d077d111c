"""Ask a server, before the run, which models it has and how large its window is.

Each server tells it differently: llama.cpp `GET /props`, vLLM
`max_model_len` in `GET /v1/models`, LM Studio `GET /api/v0/models`, Ollama
`POST /api/show` (the engines measured are in README.md, "Other engines": the
window column). What is learnt goes into the run record's `server`.
"""
from __future__ import annotations

import re

from .errors import UsageError
from .records import Server
from .transport import connect_reason


class Unreachable(Exception):
    """The server could not be reached at all."""


def preflight(transport, model: str | None, asked_by: str = "--model") -> tuple[str | None, Server]:
    """Return the model to ask for and what the server said about itself.

    Where the server lists its models, the model is one of them: the first
    when none is given, else the one listed under the name given (see
    `served_name`); a model it does not list is a usage error naming both,
    `asked_by` saying where the name came from.
    """
    listing = _models(transport)
    models = None if listing is None else [m.get("id") for m in listing if isinstance(m, dict)]
    if models:
        listed = served_name(model, models) if model is not None else models[0]
        if listed is None:
            raise UsageError(f"{asked_by} {model!r}: the server at {transport.base_url} serves "
                             f"{_names(models)}, not {model!r}")
        model = listed
    for probe in (_llama_cpp, _vllm, _lm_studio, _ollama):
        found = probe(transport, listing or [], model)
        if found:
            return model, Server(models=models, **found)
    return model, Server(models=models)


def served_name(model: str, listed: list) -> str | None:
    """The name a server lists `model` under: that name; else the one listed
    entry it ends (transformers serve lists its model's folder, LM Studio
    publisher/model) or that is its `:latest` tag (Ollama); else None."""
    if model in listed:
        return model
    def last(name) -> str:
        return str(name).rstrip("/").rsplit("/", 1)[-1]
    same = [m for m in listed if last(m) == last(model) or m == f"{model}:latest"]
    return same[0] if len(same) == 1 else None


def _names(models: list, most: int = 5) -> str:
    names = ", ".join(repr(m) for m in models[:most])
    return names + (f" and {len(models) - most} more" if len(models) > most else "")


def _models(transport) -> list | None:
    try:
        data = transport.get_json("/models")
    except Exception as e:  # noqa: BLE001
        if _is_connect_error(e):
            lead = "cannot connect to" if "Connect" in type(e).__name__ else "no answer from"
            raise Unreachable(transport.redact(f"{lead} {transport.base_url}: {connect_reason(e)}")
                              + " (is the server running? set --base-url or OPENAI_BASE_URL)") from None
        return None
    items = data.get("data") if isinstance(data, dict) else data
    return items if isinstance(items, list) else None


def _llama_cpp(transport, listing, model) -> dict | None:
    props = _try(transport, "/props", root=True)
    settings = (props or {}).get("default_generation_settings") or {}
    n_ctx = settings.get("n_ctx")
    if not n_ctx:
        return None
    return {"context_window": n_ctx, "context_source": "llama.cpp /props",
            "software": "llama.cpp", "build": props.get("build_info"),
            "total_slots": props.get("total_slots")}


def _vllm(transport, listing, model) -> dict | None:
    for m in listing:
        if isinstance(m, dict) and m.get("max_model_len") and m.get("id") == model:
            return {"context_window": m["max_model_len"], "context_source": "/v1/models max_model_len",
                    "software": "vllm"}
    return None


def _lm_studio(transport, listing, model) -> dict | None:
    data = _try(transport, "/api/v0/models", root=True)
    for m in (data or {}).get("data") or []:
        if m.get("id") == model:
            n = m.get("loaded_context_length") or m.get("max_context_length")
            if n:
                return {"context_window": n, "context_source": "LM Studio /api/v0/models",
                        "software": "lm-studio", "max_context_length": m.get("max_context_length")}
    return None


def _ollama(transport, listing, model) -> dict | None:
    if not model:
        return None
    info = _try(transport, "/api/show", root=True, method="POST", body={"model": model})
    if not info:
        return None
    trained = next((v for k, v in (info.get("model_info") or {}).items()
                    if k.endswith(".context_length")), None)
    m = re.search(r"num_ctx\s+(\d+)", info.get("parameters") or "")
    # Ollama silently truncates at num_ctx (2048-4096 by default), not the trained length
    window = int(m.group(1)) if m else None
    return {"context_window": window, "context_source": "ollama /api/show num_ctx" if window else None,
            "software": "ollama", "trained_context": trained}


def _try(transport, path, root=False, method="GET", body=None):
    try:
        return transport.get_json(path, root=root, method=method, body=body, timeout_s=2.0)
    except Exception:  # noqa: BLE001 - an endpoint this server does not have
        return None


def _is_connect_error(e: Exception) -> bool:
    name = type(e).__name__
    return "Connect" in name or "Timeout" in name or isinstance(e, OSError)
