"""What an SRE reads of a running dispatcher: its Prometheus metrics (``metrics``), the
cluster-wide queue state read from Redis for them on one replica at a time
(``queue_state``), and the /healthz, /readyz and /metrics HTTP endpoints
(``health_server``)."""
