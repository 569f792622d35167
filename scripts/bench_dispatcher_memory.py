#!/usr/bin/env python3
"""Dispatcher memory with hostile payloads queued: peak RSS while draining big payloads.

Queues ``--big`` payloads of ``--size-mib`` MiB each ahead of ``--valid`` valid messages,
then starts the dispatcher (its own process, kubernetes executor, the admin kubeconfig of a
real control plane: tests/support/controlplane.py, etcd, kube-apiserver,
kube-controller-manager and kube-scheduler on 127.0.0.1; a real Redis) in a namespace of
its own and waits until every valid message is a Job, seen through a watch. Prints the
dispatcher's peak RSS (VmHWM), what was dead-lettered and how long the drain took, with the
1-minute load average beside each figure; asserts nothing. While it drains, the Job
controller creates a pod per Job (Pending: there is no node) and the scheduler tries to
place them.

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

from kubernetes import client, config

from contracts.connections import RedisSettings, create_redis
from tests.support import controlplane
from tests.support.dispatch import DispatcherProcess
from tests.support.services import redis_server

NAMESPACE = "bench-memory"


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_jobs(batch: client.BatchV1Api, count: int, timeout: float) -> int:
    """Watch the namespace's Jobs until ``count`` exist (or ``timeout``); returns how many."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    version = None
    while len(seen) < count and time.monotonic() < deadline:
        listed = batch.list_namespaced_job(NAMESPACE)
        seen.update(j.metadata.name for j in listed.items)
        version = listed.metadata.resource_version
        left = max(1, int(deadline - time.monotonic()))
        resp = batch.list_namespaced_job(NAMESPACE, watch=True, resource_version=version,
                                         timeout_seconds=min(left, 60),
                                         _preload_content=False)
        for line in resp:  # one JSON event per line
            event = json.loads(line)
            if event["type"] == "ADDED":
                seen.add(event["object"]["metadata"]["name"])
                if len(seen) >= count:
                    resp.close()
                    break
    return len(seen)


async def bench(args: argparse.Namespace) -> None:
    print(f"starting the control plane ({load()})")
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_srv, \
            controlplane.running() as cp:
        print(f"control plane started in {cp.started_in:.1f} s ({load()})")
        cp.kubectl("create", "namespace", NAMESPACE)
        cp.kubectl("label", "namespace", NAMESPACE,
                   "pod-security.kubernetes.io/enforce=restricted",
                   "pod-security.kubernetes.io/enforce-version=latest")
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(cp.kubeconfig()),
                                client_configuration=configuration)
        batch = client.BatchV1Api(client.ApiClient(configuration))
        redis = create_redis(RedisSettings(url=redis_srv.url))
        keys = RedisSettings().keys
        big = b'{"server_handle": "big", "pad": "' + b"x" * (args.size_mib << 20) + b'"}'
        for _ in range(args.big):
            await redis.lpush(keys.queue, big)
        for i in range(args.valid):
            await redis.lpush(keys.queue, json.dumps(
                {"server_handle": f"valid-{i}", "request_id": f"valid-{i}"}))
        print(f"queued {args.big} x {len(big) / 2**20:.1f} MiB payloads ahead of "
              f"{args.valid} valid messages ({load()})")
        dispatcher = DispatcherProcess({
            "REDIS_URL": redis_srv.url, "DISPATCHER_KUBECONFIG": str(cp.kubeconfig()),
            "DISPATCHER_NAMESPACE": NAMESPACE, "DISPATCHER_INSTANCE": "bench",
            "DISPATCHER_MAX_IN_FLIGHT": str(args.valid + 10), "DISPATCHER_LOG_LEVEL": "WARNING",
        }, Path(tmp) / "dispatcher.log").start()
        start = time.perf_counter()
        assert dispatcher.proc is not None
        watching = asyncio.create_task(asyncio.to_thread(wait_jobs, batch, args.valid, 600))
        while not watching.done():
            if dispatcher.proc.poll() is not None:
                print(f"dispatcher exited with {dispatcher.proc.returncode}")
                print(dispatcher.logs()[-2000:])
                return
            await asyncio.wait({watching}, timeout=0.2)
        jobs = watching.result()
        elapsed = time.perf_counter() - start
        rss = peak_rss_mb(dispatcher.proc.pid)
        dead = await redis.llen(keys.dead_letter)
        sample = json.loads(await redis.lindex(keys.dead_letter, 0) or b"{}")
        dispatcher.terminate()
        if jobs < args.valid:
            print("timed out waiting for the valid messages' Jobs")
        print(f"valid messages dispatched: {jobs}/{args.valid} in {elapsed:.1f} s "
              f"(from dispatcher start) ({load()})")
        print(f"dead-lettered: {dead} (reason {sample.get('reason')}, entry keeps "
              f"{len(sample.get('payload', ''))} bytes of {sample.get('payload_bytes')})")
        print(f"dispatcher peak RSS: {rss:.0f} MB ({load()})")
        print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=2)
    parser.add_argument("--valid", type=int, default=50)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
