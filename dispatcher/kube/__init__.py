"""The Kubernetes client layer, one module per concern: the client and its transports
(client.py, poster.py), creating Jobs (creating.py), stopping them and recording Events
(stopping.py), watching (watching.py, its vocabularies in kinds.py), reading Job and Pod
objects (classify.py, with the end reasons it names), its own errors (errors.py) and the
RBAC self-check (access.py). It imports neither the executors nor the dispatch pipeline
(tests/dispatcher/test_layers.py)."""
