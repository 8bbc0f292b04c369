"""Rules import nothing that does I/O: no prefect, httpx, sqlmodel, no connectors (checked in a fresh
interpreter, so nothing else the test session imported can hide a leak)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pmsync.rules

FORBIDDEN = ("prefect", "httpx", "sqlmodel", "sqlalchemy", "connectors", "tasks", "flows", "deployments",
             "simulators")
RULE_MODULES = sorted(f"pmsync.rules.{m.name}" for m in pkgutil.iter_modules(pmsync.rules.__path__))


def test_every_rules_module_is_checked() -> None:
    assert {"pmsync.rules.consent", "pmsync.rules.echo", "pmsync.rules.mapping", "pmsync.rules.newsletter",
            "pmsync.rules.status", "pmsync.rules.views"} <= set(RULE_MODULES)


def test_importing_the_rules_loads_no_io_library_and_nothing_of_ours_that_does_io() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {RULE_MODULES!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    root = Path(pmsync.rules.__file__).resolve().parents[2]  # the repository, so `pmsync` imports from here
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    loaded = json.loads(out.stdout)
    leaks = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert leaks == [], f"pmsync.rules pulled in {leaks}"
    ours = [m for m in loaded if m.startswith("pmsync.") and not m.startswith("pmsync.rules")]
    assert ours == [], f"rules import non-rules pmsync modules: {ours}"
