"""Shared fixtures. The real-server fixtures live in their own modules and are registered here."""

import os

from hypothesis import settings

# The suite (and CI) runs the same generated cases every time, so a red run means a change broke something, not that
# the search got lucky; HYPOTHESIS_PROFILE=explore draws fresh cases (how the ordering's counterexamples were found).
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Real PostgreSQL servers (started on demand), the real Kubernetes control plane and the chart's release on it,
# and the Kubernetes API emulator (a test double, kept where a real server cannot be made to do a thing on cue).
pytest_plugins = [
    "tests.pg",
    "tests.emulator.fixtures",
    "tests.operator_harness",
    "tests.kube.fixtures",
    "tests.kube.release",
    "tests.client_fixtures",
]
