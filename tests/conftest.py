"""Shared fixtures. The real-server fixtures live in their own modules and are registered here."""

# Real PostgreSQL servers (started on demand), the Kubernetes API emulator (a test double, not a real server),
# and the operator run against it.
pytest_plugins = ["tests.pg", "tests.emulator.fixtures", "tests.operator_harness"]
