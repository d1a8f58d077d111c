"""The data files that ship with lalmpipe: the prompts and the planted facts.

Their one source is the repository's top-level prompts/ folder; pyproject.toml
ships it inside the package as lalmpipe/data, so an installed lalmpipe reads it
as package data wherever it lives.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def bundled(name: str) -> Traversable:
    """Return the shipped data file `name` (a Traversable; its str() names the file).

    Installed from a wheel, the file is package data in lalmpipe/data. Run from a
    source tree (a clone on sys.path, or an editable install) it is the tree's own
    prompts/ folder beside the package, so the data always comes with the code that runs.
    """
    installed = resources.files(__package__) / "data"
    # else a source tree: the package is this folder on disk, beside prompts/
    return installed / name if installed.is_dir() else Path(__file__).parent.parent / "prompts" / name


def open_text(source: str | os.PathLike | Traversable) -> TextIO:
    """Open a file given as a path (str or os.PathLike) or as a Traversable, as UTF-8 text."""
    if isinstance(source, (str, os.PathLike)):
        source = Path(source)
    return source.open(encoding="utf-8")
