"""bin/lalm-*: a checkout runs without install, and says what to do when it cannot."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

COMMANDS = ("lalm-chat", "lalm-metrics", "lalm-prompts", "lalm-replay", "lalm-report")


@pytest.mark.parametrize("name", COMMANDS)
def test_a_launcher_without_the_dependencies_says_how_to_install_them(tmp_path, name):
    # a checkout with no .venv, run by an interpreter without site-packages (no jsonlines, msgspec, openai)
    for part in ("bin", "lalmpipe"):
        shutil.copytree(os.path.join(ROOT, part), tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([sys.executable, "-S", str(tmp_path / "bin" / name), "--help"],
                          capture_output=True, text=True, env=env, timeout=30)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"{name}: error: lalmpipe's dependencies are not installed: "
                           "run `make install` (or `pip install .`)\n")


def test_a_launcher_in_the_checkout_runs_the_command():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "lalm-prompts"), "--ids", "2"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('{"kind":"prompt","v":2,"id":2,"tier":"foundations"')
