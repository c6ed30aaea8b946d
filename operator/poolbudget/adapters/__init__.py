"""All I/O: PostgreSQL, Kubernetes, Prometheus. Adapters read facts and apply what they are given."""
