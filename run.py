#!/usr/bin/env python3
"""Bootstrap and run pmsync on a machine that has only python3.

    python3 run.py demo     # the main job on the embedded default (simulators + local Prefect + SQLite)
    python3 run.py test     # the test suite (what CI runs)
    python3 run.py lint     # ruff + mypy
    python3 run.py pmsync ARGS...   # any pmsync command inside the project's venv

Creates `.venv/` on first use and installs the project with the pinned versions in
`constraints.txt`; reinstalls only when pyproject.toml or constraints.txt change.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".pmsync-install-stamp"


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    if sys.version_info[:2] != (3, 11):
        print(f"note: pmsync targets Python 3.11; this is {sys.version.split()[0]}", file=sys.stderr)
    if not (BIN / "python").exists():
        print("Creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    print("Installing pmsync and its pinned dependencies into .venv (first run takes about a minute) ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[dev]"], check=True, cwd=ROOT)
    STAMP.write_text(_fingerprint())


def run(argv: list[str]) -> int:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(argv, cwd=ROOT, env=env).returncode


def main(args: list[str]) -> int:
    if not args or args[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    command, rest = args[0], args[1:]
    ensure_venv()
    if command == "demo":
        return run([str(BIN / "pmsync"), "demo", *rest])
    if command == "test":
        return run([str(BIN / "python"), "-m", "pytest", *rest])
    if command == "lint":
        code = run([str(BIN / "ruff"), "check", "."])
        return code or run([str(BIN / "mypy"), "."])
    if command == "pmsync":
        return run([str(BIN / "pmsync"), *rest])
    print(f"unknown command {command!r}; try: demo, test, lint, pmsync", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
