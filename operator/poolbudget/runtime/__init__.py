"""kopf wiring: handlers, wake-ups, the loop per budget, the runner and the operator's own metrics; the only code
that imports kopf."""
