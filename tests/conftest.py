"""Shared fixtures. The real-server fixtures live in their own modules and are registered here."""

from tests.emulator.fixtures import emulator  # noqa: F401  (the Kubernetes API emulator, not a real server)
