#!/usr/bin/env python3
"""The two commands of the quick start. Needs only Python 3.11+; sets everything else up itself.

    python3 run.py demo    # simulators + Dagster UI on http://127.0.0.1:3000 with demo data
    python3 run.py test    # the whole test suite (what CI runs)

Both create `.venv/` and install the project (pinned by requirements.lock) on first use, and
reinstall only when pyproject.toml or the lock file change.
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
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed"


def _install_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "requirements.lock"):
        path = ROOT / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_environment() -> None:
    if not PYTHON.exists():
        print("creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    fingerprint = _install_fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    print(
        "installing the project and its dependencies into .venv (first run takes a few minutes) ...",
        flush=True,
    )
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    lock = ROOT / "requirements.lock"
    constraints = ["-c", str(lock)] if lock.exists() else []
    subprocess.run([*pip, *constraints, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(fingerprint)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(__doc__)
        return 2
    ensure_environment()
    command, rest = argv[0], argv[1:]
    os.chdir(ROOT)
    if command == "demo":
        return subprocess.call([str(BIN / "sage-wms"), "demo", *rest])
    return subprocess.call([str(PYTHON), "-m", "pytest", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
