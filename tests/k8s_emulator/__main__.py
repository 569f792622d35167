"""`python -m tests.k8s_emulator --port N`: serve until SIGTERM / SIGINT, print the URL.

SIGUSR1 takes the server down (connections refused), SIGUSR2 brings it back on the port.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from .controller import ControllerConfig
from .core import EmulatorConfig, EmulatorCore


def _parse(argv: list[str] | None) -> EmulatorConfig:
    parser = argparse.ArgumentParser(prog="python -m tests.k8s_emulator",
                                     description="Kubernetes API emulator for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--window", type=int, default=1000,
                        help="watch events kept per resource")
    parser.add_argument("--bookmark-interval", type=float, default=5.0)
    parser.add_argument("--default-watch-timeout", type=float, default=None)
    parser.add_argument("--gc-delay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--controller-mode", default="off",
                        choices=["off", "pending", "running", "succeed", "fail"])
    parser.add_argument("--controller-step-delay", type=float, default=0.0)
    parser.add_argument("--controller-exit-code", type=int, default=1)
    args = parser.parse_args(argv)
    return EmulatorConfig(
        host=args.host, port=args.port, window=args.window,
        bookmark_interval=args.bookmark_interval,
        default_watch_timeout=args.default_watch_timeout, gc_delay=args.gc_delay,
        seed=args.seed,
        controller=ControllerConfig(mode=args.controller_mode,
                                    step_delay=args.controller_step_delay,
                                    exit_code=args.controller_exit_code))


async def _serve(config: EmulatorConfig) -> None:
    core = EmulatorCore(config)
    await core.start()
    print(core.url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: core.spawn(core.down()))
    loop.add_signal_handler(signal.SIGUSR2, lambda: core.spawn(core.up()))
    await stop.wait()
    await core.stop()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_serve(_parse(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
