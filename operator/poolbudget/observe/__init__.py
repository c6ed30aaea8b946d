"""Raw Kubernetes objects in, typed facts out: the only code that reads plain API dicts."""
