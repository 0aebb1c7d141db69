"""Why the job refuses a request; the transports map each to their own status.

A malformed or unservable cursor is `packer.contract.cursor.TicketError` (Flight: bad
ticket) and a service on its way down is `service.batch_source.ServiceStopping` (Flight:
unavailable, reconnect with your cursor); both belong to the transport's side. The
config changes the control plane refuses are the job's own: a change that cannot apply
(HTTP 409) and a stale If-Match version (HTTP 412).
"""

from __future__ import annotations


class ConfigConflict(Exception):
    """A valid config change that cannot apply to the running job (HTTP 409)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class VersionMismatch(Exception):
    """PATCH with If-Match naming another config version than the current one (HTTP 412)."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the config is at version {current}")
        self.current = current
