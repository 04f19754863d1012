"""A request the engine cannot serve: a kind (protocol.messages.ERROR_KINDS) and the field at
fault, by protocol names. The gateway turns them into each wire's status and words."""
from __future__ import annotations

from protocol import messages as m


class RequestError(Exception):
    def __init__(self, message: str, kind: str = "invalid_value", field: str | None = None):
        super().__init__(message)
        self.kind, self.field = kind, field

    def event(self, rid: str) -> m.Error:
        return m.Error(rid, str(self), self.kind, self.field)


def internal(rid: str, error: Exception) -> m.Error:
    """An unexpected exception in one request's work, reported as that request's error."""
    return m.Error(rid, f"The worker could not complete this request: {type(error).__name__}: {error}", "internal_error")
