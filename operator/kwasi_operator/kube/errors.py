"""What the API server said when it refused a request: its ``Status`` object, parsed once."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from kubernetes.aio.client.exceptions import ApiException


@dataclass(eq=False)
class ApiError(Exception):
    """A refused API request: the HTTP code and the fields of the API server's ``Status`` body."""

    code: int
    reason: str = ""
    message: str = ""
    kind: str | None = None  # details.kind: the resource the refusal is about
    causes: tuple[str, ...] = field(default=())  # details.causes[].reason

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    @classmethod
    def from_exception(cls, e: ApiException) -> ApiError:
        body: Any = None
        with contextlib.suppress(ValueError):
            body = json.loads(e.body) if e.body else None
        if not isinstance(body, dict):  # e.g. a plain-text 404 for a resource type that does not exist
            return cls(int(e.status or 0), str(e.reason or ""), str(e.body or e.reason or ""))
        details = body.get("details") or {}
        return cls(
            code=int(body.get("code") or e.status or 0),
            reason=str(body.get("reason") or e.reason or ""),
            message=str(body.get("message") or ""),
            kind=details.get("kind"),
            causes=tuple(str(c.get("reason", "")) for c in details.get("causes") or ()),
        )
