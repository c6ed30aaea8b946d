"""The Kubernetes adapter's errors, apart from the adapter: who handles them does not import the client with them.

A failed call is one of these (never a ``kubernetes`` client exception); messages never hold a Secret's value.
"""

from __future__ import annotations


class KubernetesError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when there was no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubernetesError):
    """404: the object (or its namespace) does not exist."""


class Conflict(KubernetesError):
    """409: the object changed since it was read (a stale resourceVersion)."""


class Forbidden(KubernetesError):
    """403: RBAC does not allow the call."""


class SecretError(KubernetesError):
    """The Secret or its key is missing or unreadable; the message never holds the value."""
