"""The Redis side of dispatching: the queue store (``queue``: claims, server slots, waiting
lists, acks, dead letters), its Lua scripts (``lua``: each state transition one atomic
script), the one retry policy for Redis calls (``retry``) and which Redis errors pass on
their own (``errors``). It imports neither the pipeline nor the executors
(tests/dispatcher/test_layers.py)."""
