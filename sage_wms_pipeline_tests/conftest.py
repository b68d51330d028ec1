"""Shared fixtures: the simulators, served over real HTTP on loopback ports."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sage_wms_pipeline import jsonutil
from sage_wms_pipeline.scenario.model import Scenario


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wms_available() -> bool:
    return importlib.util.find_spec("sage_wms_pipeline.simulators.mintsoft.app") is not None


@dataclass
class Sandbox:
    """A running `sage-wms sandbox serve` process."""

    sage_url: str
    wms_url: str | None
    data_dir: Path
    process: subprocess.Popen[bytes]

    def _post(self, base: str, path: str, body: object | None = None) -> httpx.Response:
        resp = httpx.post(
            base + path,
            content=jsonutil.dumps(body) if body is not None else None,
            headers={"Content-Type": "application/json"},
            timeout=120,
        )
        resp.raise_for_status()
        return resp

    def reset(self) -> None:
        """Back to a fresh simulator with the bundled demo data, faults off."""
        for base in filter(None, (self.sage_url, self.wms_url)):
            self._post(base, "/_sandbox/reset")

    def load(self, scenario: Scenario) -> None:
        body = scenario.model_dump(mode="python")
        for base in filter(None, (self.sage_url, self.wms_url)):
            self._post(base, "/_sandbox/scenario", body)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_sandbox(data_dir: Path, with_wms: bool | None = None) -> Sandbox:
    with_wms = _wms_available() if with_wms is None else with_wms
    sage_port, wms_port = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "sage_wms_pipeline.cli",
        "sandbox",
        "serve",
        "--sage-port",
        str(sage_port),
        "--wms-port",
        str(wms_port),
        "--data-dir",
        str(data_dir),
    ]
    if not with_wms:
        cmd.append("--no-wms")
    log = open(data_dir.parent / f"{data_dir.name}.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    box = Sandbox(
        sage_url=f"http://127.0.0.1:{sage_port}",
        wms_url=f"http://127.0.0.1:{wms_port}" if with_wms else None,
        data_dir=data_dir,
        process=proc,
    )
    deadline = time.monotonic() + 60
    for base in filter(None, (box.sage_url, box.wms_url)):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sandbox exited early; see {log.name}")
            try:
                if httpx.get(base + "/_sandbox/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                box.stop()
                raise RuntimeError(f"sandbox at {base} not healthy within 60 s; see {log.name}")
            time.sleep(0.1)
    return box


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = start_sandbox(tmp_path_factory.mktemp("sandbox") / "state")
    yield box
    box.stop()


@pytest.fixture
def sandbox(sandbox_server: Sandbox) -> Sandbox:
    """The session's simulators, reset to the bundled demo data before each test."""
    sandbox_server.reset()
    return sandbox_server
