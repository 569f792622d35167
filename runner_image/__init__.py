"""infra-service runner: provisions one server per Kubernetes Job (``python -m runner_image``)."""
