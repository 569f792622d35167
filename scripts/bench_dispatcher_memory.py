#!/usr/bin/env python3
"""Dispatcher memory with hostile payloads queued: peak RSS while draining big payloads.

Queues ``--big`` payloads of ``--size-mib`` MiB each ahead of ``--valid`` valid messages,
then starts the dispatcher (kubernetes executor, real client, the Kubernetes API emulator,
a real Redis) and waits until every valid message is a Job. Prints the dispatcher's peak
RSS (VmHWM), what was dead-lettered and how long the drain took; asserts nothing.

    .venv/bin/python scripts/bench_dispatcher_memory.py [--big 200] [--size-mib 2] [--valid 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contracts.connections import RedisSettings, create_redis
from tests.dispatcher.kube_support import kube
from tests.dispatcher.support import DispatcherProcess
from tests.support.services import redis_server


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_srv, \
            kube(Path(tmp)) as k8s:
        os.environ["REDIS_URL"] = redis_srv.url
        redis = create_redis(RedisSettings())
        keys = RedisSettings().keys
        big = b'{"server_handle": "big", "pad": "' + b"x" * (args.size_mib << 20) + b'"}'
        for _ in range(args.big):
            await redis.lpush(keys.queue, big)
        for i in range(args.valid):
            await redis.lpush(keys.queue, json.dumps(
                {"server_handle": f"valid-{i}", "request_id": f"valid-{i}"}))
        print(f"queued {args.big} x {len(big) / 2**20:.1f} MiB payloads ahead of "
              f"{args.valid} valid messages")
        dispatcher = DispatcherProcess({
            "REDIS_URL": redis_srv.url, "DISPATCHER_KUBECONFIG": str(k8s.kubeconfig),
            "DISPATCHER_NAMESPACE": "bench", "DISPATCHER_INSTANCE": "bench",
            "DISPATCHER_MAX_IN_FLIGHT": str(args.valid + 10), "DISPATCHER_LOG_LEVEL": "WARNING",
        }, Path(tmp) / "dispatcher.log").start()
        start = time.perf_counter()
        assert dispatcher.proc is not None
        while len(await asyncio.to_thread(k8s.jobs, "bench")) < args.valid:
            if dispatcher.proc.poll() is not None:
                print(f"dispatcher exited with {dispatcher.proc.returncode}")
                print(dispatcher.logs()[-2000:])
                return
            if time.perf_counter() - start > 600:
                print("timed out waiting for the valid messages' Jobs")
                break
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - start
        rss = peak_rss_mb(dispatcher.proc.pid)
        dead = await redis.llen(keys.dead_letter)
        sample = json.loads(await redis.lindex(keys.dead_letter, 0) or b"{}")
        jobs = len(k8s.jobs("bench"))
        dispatcher.terminate()
        print(f"valid messages dispatched: {jobs}/{args.valid} in {elapsed:.1f} s "
              "(from dispatcher start)")
        print(f"dead-lettered: {dead} (reason {sample.get('reason')}, entry keeps "
              f"{len(sample.get('payload', ''))} bytes of {sample.get('payload_bytes')})")
        print(f"dispatcher peak RSS: {rss:.0f} MB")
        print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=2)
    parser.add_argument("--valid", type=int, default=50)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
