"""Run the Sage 200 and Mintsoft simulators side by side, one port each, in one process."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import uvicorn

log = logging.getLogger(__name__)


def build_servers(
    host: str, sage_port: int | None, wms_port: int | None, data_dir: Path
) -> list[uvicorn.Server]:
    data_dir.mkdir(parents=True, exist_ok=True)
    servers: list[uvicorn.Server] = []
    if sage_port is not None:
        from sage_wms_pipeline.simulators.sage200.app import create_app as create_sage_app

        servers.append(_server(create_sage_app(data_dir), host, sage_port))
    if wms_port is not None:
        from sage_wms_pipeline.simulators.mintsoft.app import create_app as create_wms_app

        servers.append(_server(create_wms_app(data_dir), host, wms_port))
    return servers


def _server(app: object, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    return uvicorn.Server(config)


def serve(host: str, sage_port: int | None, wms_port: int | None, data_dir: Path) -> None:
    servers = build_servers(host, sage_port, wms_port, data_dir)
    if not servers:
        raise SystemExit("nothing to serve: give --sage-port and/or --wms-port")

    async def _run() -> None:
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(_run())
