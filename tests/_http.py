"""Small pieces shared by the tests' stand-in HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any


def reply_json(handler, payload: Any, status: int = 200) -> None:
    """Answer the request `handler` serves with `payload` as JSON."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
