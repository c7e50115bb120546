"""Error responses in the provider's own format, so each SDK raises its usual exception.

Used when the library answers for the gateway: every node failed, or a failed
answer is handed back with the story of each node tried added to its message.
"""

from __future__ import annotations

import json

# Anthropic's error type for each status (shared notes, "Anthropic").
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_body(provider: str, status: int, message: str, code: str) -> bytes:
    """A JSON error body as the provider would send it."""
    if provider == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        document: dict[str, object] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        document = {"error": {"message": message, "type": "yibu_middleware_error", "param": None, "code": code}}
    return json.dumps(document).encode()


def annotate(body: bytes, note: str) -> bytes | None:
    """The same error body with ``note`` added to its message; None if it is not one we know."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message", ""), str):
        return None
    error["message"] = f"{error.get('message') or ''} [{note}]".strip()
    return json.dumps(document).encode()
