"""Lint and types, as the style guide asks: ruff everywhere, mypy strict over the package."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_finds_nothing() -> None:
    done = subprocess.run(
        [str(BIN / "ruff"), "check", "app", "config", "workers", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_passes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "app", "config", "workers"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr


#: The most lines a module of the package may have (migration revisions aside: each is one
#: step of a schema's history, written once). A module past it does several jobs: split it.
MAX_MODULE_LINES = 400


def test_no_module_of_the_package_is_over_the_size_limit() -> None:
    big = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / "app").rglob("*.py")
        if "versions" not in path.relative_to(ROOT / "app").parts
        and (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"
