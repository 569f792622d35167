"""Kubernetes access, one module per verb (as kopf does): creating, deleting, watching."""
