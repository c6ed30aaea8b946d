"""The allocation, the ordering of changes and the demand decisions: pure functions, no I/O, the clock passed in."""
