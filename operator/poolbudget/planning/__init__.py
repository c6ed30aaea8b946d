"""The allocation: pure functions, no kopf, no I/O, no clock."""
