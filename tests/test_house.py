"""The house's shape, checked: no import cycles in lalmpipe, no module past about 400 lines,
each with a docstring; the report's JSON Schema is the one its Structs give, and the JSON
reports hold to it and read back into the same typed report."""
import ast
import json
import os
import sys

import jsonschema
import msgspec
import pytest

from conftest import ROOT
from lalmpipe.results import load, to_builtins
from regen_golden import CASES, FIXTURES, SCHEMA, schema_text

PACKAGE = os.path.join(ROOT, "lalmpipe")
MODULES = sorted(os.path.join(d, f) for d, _, fs in os.walk(PACKAGE) for f in fs if f.endswith(".py"))


def _name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def imports(path: str) -> set[str]:
    """The lalmpipe modules a module imports, wherever in it the import stands."""
    name, tree = _name(path), ast.parse(open(path, encoding="utf-8").read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            for alias in node.names:
                out.add(f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in NAMES else mod)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m in NAMES and m != name}


NAMES = {_name(p) for p in MODULES}


def test_no_module_imports_itself_round_a_cycle():
    graph = {_name(p): imports(p) for p in MODULES}
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = 2
    for m in sorted(graph):
        visit(m, [])
    assert graph["lalmpipe.report"] >= {"lalmpipe.aggregate", "lalmpipe.render.text"}


def test_no_module_is_named_as_a_standard_library_module():
    # a file run by its path (hfmodel.py, by the converter's python) puts its folder first on
    # sys.path: a lalmpipe/numbers.py there once hid the standard library's from torch
    assert [p for p in MODULES if os.path.basename(p)[:-3] in sys.stdlib_module_names] == []


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_each_module_is_small_and_says_its_job(path):
    source = open(path, encoding="utf-8").read()
    assert len(source.splitlines()) <= 420, f"{_name(path)} has {len(source.splitlines())} lines"
    assert ast.get_docstring(ast.parse(source)), f"{_name(path)} has no docstring"


def test_the_committed_schema_is_the_one_the_structs_give():
    with open(SCHEMA, encoding="utf-8") as fp:
        assert fp.read() == schema_text(), "run tests/regen_golden.py and review the diff"


@pytest.mark.parametrize("case", CASES)
def test_json_reports_hold_to_the_schema_and_read_back_the_same(case):
    with open(os.path.join(FIXTURES, f"{case}.report.out.json"), encoding="utf-8") as fp:
        doc = json.load(fp)
    with open(SCHEMA, encoding="utf-8") as fp:
        jsonschema.validate(doc, json.load(fp))
    assert to_builtins(load(doc)) == doc
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "summary": {**doc["summary"], "turns": "three"}}, json.load(open(SCHEMA)))
    with pytest.raises(msgspec.ValidationError):
        load({**doc, "summary": {**doc["summary"], "turns": "three"}})
