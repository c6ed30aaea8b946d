"""The only doors: Kubernetes, PostgreSQL, Prometheus. Adapters read facts and apply the patches they are given;
they take and return plain or ``api`` types, raise their own errors, and know nothing of plans or profiles."""
