"""Where the project keeps its files. Everything is overridable from the environment."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Top-level `data/`: bundled scenarios, and (under runtime/) the demo's SQLite files."""
    return Path(os.environ.get("SAGE_WMS_DATA_DIR", PROJECT_ROOT / "data"))


def runtime_dir() -> Path:
    path = Path(os.environ.get("SAGE_WMS_RUNTIME_DIR", data_dir() / "runtime"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def demo_scenario_path() -> Path:
    return data_dir() / "scenarios" / "demo.json"
