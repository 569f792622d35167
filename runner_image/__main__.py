"""``python -m runner_image``: what the Job's container runs (runner_image/cli.py).

Two start-up costs every Job would pay for nothing:
- the collector runs ~100 times while the runner's modules load, over objects that live
  as long as the process (30-40 ms): it stays off until ``entrypoint()`` has frozen them;
- pydantic looks for plugins by reading every installed distribution's metadata when it
  builds its first model; the runner uses none.
"""

import gc
import os

gc.disable()
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from runner_image.cli import entrypoint  # noqa: E402

entrypoint()
