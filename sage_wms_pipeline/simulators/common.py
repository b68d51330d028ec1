"""Pieces both simulators share: exact JSON responses and the port-per-app server."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from sage_wms_pipeline import jsonutil


class ExactJSONResponse(JSONResponse):
    """JSON response that writes Decimal as a JSON number with all its digits."""

    def render(self, content: Any) -> bytes:
        return jsonutil.dumps(content).encode("utf-8")
