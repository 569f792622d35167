"""What the dispatcher and the runner share: the contract between the two deployables.

The message and result models with their vocabularies, the Redis key layout, result
publishing with its exactly-once marker, connection settings and log setup. Both
``dispatcher`` and the runner import this package; neither imports the other.
"""
