"""An in-process emulator of the Kubernetes API over HTTP: a test double for kopf, kubectl and clients.

Not a real API server. See ``emulator.KubernetesEmulator`` for the API and ``fixtures`` for pytest.
"""

from .emulator import KubernetesEmulator, wait_until
from .pods import ManualClock, PodSimulator
from .store import ApiError, RejectedWrite, WriteRecord, replay

__all__ = [
    "ApiError",
    "KubernetesEmulator",
    "ManualClock",
    "PodSimulator",
    "RejectedWrite",
    "WriteRecord",
    "replay",
    "wait_until",
]
