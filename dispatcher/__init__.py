"""infra-service dispatcher: provisioner:queue -> one Kubernetes Job per message."""
