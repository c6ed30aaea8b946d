"""The PoolBudget API: spec and status models, the CRD generated from them, and the one home of the names
(annotations, condition types and reasons, profile names) every other layer uses."""
