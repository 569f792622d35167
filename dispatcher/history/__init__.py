"""The run history in PostgreSQL (table ``runs``): the dispatcher's rows at a Job's creation
and end (store.py), their pruning (pruning.py), and what the CLI reads (reading.py,
rendering.py)."""
