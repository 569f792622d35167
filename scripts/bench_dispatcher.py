#!/usr/bin/env python3
"""Dispatcher benchmark: idle latency, burst throughput against a raw loop, peak RSS.

Runs a real Redis, the Kubernetes API emulator (its own process) and the dispatcher (its
own process, kubernetes executor, real client). Prints figures; asserts nothing.

    .venv/bin/python scripts/bench_dispatcher.py [--burst 2000] [--idle 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client  # noqa: E402

from dispatcher.connections import RedisSettings, create_redis  # noqa: E402
from dispatcher.jobspec import build_job  # noqa: E402
from dispatcher.messages import parse_message  # noqa: E402
from dispatcher.settings import DispatcherSettings, JobTemplateSettings  # noqa: E402
from tests.dispatcher.kube_support import kube  # noqa: E402
from tests.dispatcher.support import DispatcherProcess  # noqa: E402
from tests.support.services import redis_server  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw_loop(api: client.BatchV1Api, namespace: str, count: int) -> float:
    """The baseline: the same Job bodies created back to back with the same client."""
    settings, template = DispatcherSettings(instance="baseline"), JobTemplateSettings()
    bodies = [build_job(parse_message(json.dumps(
        {"server_handle": f"raw-{i}", "request_id": f"raw-{i}"})).with_identity(),
        settings, template) for i in range(count)]
    start = time.perf_counter()
    for body in bodies:
        api.create_namespaced_job(namespace, body, _preload_content=False)
    return count / (time.perf_counter() - start)


async def count_jobs(api: client.BatchV1Api, namespace: str, instance: str) -> int:
    resp = await asyncio.to_thread(
        api.list_namespaced_job, namespace, _preload_content=False,
        label_selector=f"app.kubernetes.io/instance={instance}")
    return len(json.loads(resp.data)["items"])


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_srv, \
            kube(Path(tmp)) as k8s:
        redis_env = {"REDIS_URL": redis_srv.url}
        os.environ.update(redis_env)
        redis = create_redis(RedisSettings())
        keys = RedisSettings().keys
        api = k8s.batch
        dispatcher = DispatcherProcess({
            **redis_env, "DISPATCHER_KUBECONFIG": str(k8s.kubeconfig),
            "DISPATCHER_NAMESPACE": "bench", "DISPATCHER_INSTANCE": "bench",
            "DISPATCHER_MAX_IN_FLIGHT": str(args.burst + args.idle + 10),
            "DISPATCHER_LOG_LEVEL": "WARNING",
        }, Path(tmp) / "dispatcher.log").start()
        dispatcher.wait_ready(60)

        # Idle latency: one message at a time, until the Job is visible in the API.
        latencies = []
        for i in range(args.idle):
            rid = f"idle-{i}"
            body = parse_message(json.dumps({"server_handle": f"idle-{i}", "request_id": rid}))
            name = build_job(body, DispatcherSettings(instance="bench"),
                             JobTemplateSettings())["metadata"]["name"]
            start = time.perf_counter()
            await redis.lpush(keys.queue, body.to_json())
            while True:
                try:
                    await asyncio.to_thread(api.read_namespaced_job, name, "bench",
                                            _preload_content=False)
                    break
                except client.ApiException:
                    await asyncio.sleep(0.0005)
            latencies.append((time.perf_counter() - start) * 1000)
        print(f"idle latency ({args.idle} messages, push -> Job visible): "
              f"p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms"
              f", max {max(latencies):.1f} ms")

        # Burst: N messages at once; the dispatcher's Jobs/s.
        payloads = [json.dumps({"server_handle": f"burst-{i}", "request_id": f"burst-{i}"})
                    for i in range(args.burst)]
        start = time.perf_counter()
        for chunk in range(0, len(payloads), 500):
            await redis.lpush(keys.queue, *payloads[chunk:chunk + 500])
        target = args.idle + args.burst
        while await count_jobs(api, "bench", "bench") < target:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        dispatcher_rate = args.burst / elapsed
        rss = peak_rss_mb(dispatcher.proc.pid)
        dispatcher.terminate()

        baseline_rate = await asyncio.to_thread(raw_loop, api, "baseline", args.burst)
        print(f"burst ({args.burst} messages): dispatcher {dispatcher_rate:.0f} Jobs/s, "
              f"raw create loop {baseline_rate:.0f} Jobs/s, ratio "
              f"{dispatcher_rate / baseline_rate:.2f}")
        print(f"dispatcher peak RSS during the run: {rss:.0f} MB")
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=200)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
