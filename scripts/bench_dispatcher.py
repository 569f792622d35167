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
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client

from contracts.connections import RedisSettings, create_redis
from contracts.messages import parse_message
from dispatcher.jobspec import build_job
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from tests.dispatcher.kube_support import kube
from tests.dispatcher.support import DispatcherProcess
from tests.support.services import redis_server


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_loop(api: client.BatchV1Api, namespace: str, count: int) -> float:
    """The baseline: the same Job bodies created back to back with the same client."""
    settings, template = DispatcherSettings(instance="baseline"), JobTemplateSettings()
    bodies = [build_job(parse_message(json.dumps(
        {"server_handle": f"raw-{i}", "request_id": f"raw-{i}"})).with_identity(),
        settings, template) for i in range(count)]
    start, cpu = time.perf_counter(), time.process_time()
    for body in bodies:
        response = api.create_namespaced_job(namespace, body, _preload_content=False)
        _ = response.data  # read, then hand the connection back to the pool
        response.release_conn()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"raw create loop CPU per Job: {cpu / count * 1000:.2f} ms")
    return count / elapsed


class JobWatch:
    """Records when each Job becomes visible in the API, through a watch (no polling)."""

    def __init__(self, api: client.BatchV1Api, namespace: str) -> None:
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(api, namespace), daemon=True)
        self._thread.start()

    def _run(self, api: client.BatchV1Api, namespace: str) -> None:
        resp = api.list_namespaced_job(namespace, watch=True, timeout_seconds=3600,
                                       _preload_content=False)
        buffer = b""
        for chunk in resp.stream(65536):
            now = time.perf_counter()
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                event = json.loads(line)
                if event["type"] == "ADDED":
                    with self.cond:
                        self.seen[event["object"]["metadata"]["name"]] = now
                        self.cond.notify_all()

    def wait_for(self, name: str, timeout: float = 30) -> float:
        with self.cond:
            self.cond.wait_for(lambda: name in self.seen, timeout)
            return self.seen[name]

    def wait_count(self, count: int, timeout: float = 600) -> float:
        with self.cond:
            self.cond.wait_for(lambda: len(self.seen) >= count, timeout)
            return max(self.seen.values())


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

        watch = JobWatch(api, "bench")
        await asyncio.sleep(0.5)
        # Idle latency: one message at a time, until the Job is visible in the API.
        latencies = []
        for i in range(args.idle):
            body = parse_message(json.dumps({"server_handle": f"idle-{i}",
                                             "request_id": f"idle-{i}"}))
            name = build_job(body, DispatcherSettings(instance="bench"),
                             JobTemplateSettings())["metadata"]["name"]
            start = time.perf_counter()
            await redis.lpush(keys.queue, body.to_json())
            seen = await asyncio.to_thread(watch.wait_for, name)
            latencies.append((seen - start) * 1000)
            await asyncio.sleep(0.01)  # idle between messages
        print(f"idle latency ({args.idle} messages, push -> Job visible): "
              f"p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms"
              f", max {max(latencies):.1f} ms")

        # Burst: N messages at once; the dispatcher's Jobs/s.
        payloads = [json.dumps({"server_handle": f"burst-{i}", "request_id": f"burst-{i}"})
                    for i in range(args.burst)]
        profiler = None
        if args.profile:
            # py-spy samples the dispatcher during the burst only (collapsed stacks).
            profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                 str(dispatcher.proc.pid), "--rate", "250", "--format", "raw", "--gil",
                 "--output", args.profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(1.0)
        cpu_before = cpu_seconds(dispatcher.proc.pid)
        emulator_before = cpu_seconds(k8s.emulator.pid)
        start = time.perf_counter()
        for chunk in range(0, len(payloads), 500):
            await redis.lpush(keys.queue, *payloads[chunk:chunk + 500])
        last = await asyncio.to_thread(watch.wait_count, args.idle + args.burst)
        elapsed = last - start
        dispatcher_rate = args.burst / elapsed
        cpu_per_job = (cpu_seconds(dispatcher.proc.pid) - cpu_before) / args.burst * 1000
        emulator_per_job = (cpu_seconds(k8s.emulator.pid) - emulator_before) / args.burst * 1000
        rss = peak_rss_mb(dispatcher.proc.pid)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
            print(f"profile of the burst (collapsed stacks): {args.profile}")
        idle_before = cpu_seconds(dispatcher.proc.pid)
        await asyncio.sleep(5)
        idle_cpu = (cpu_seconds(dispatcher.proc.pid) - idle_before) / 5 * 100
        dispatcher.terminate()

        emulator_before = cpu_seconds(k8s.emulator.pid)
        baseline_rate = await asyncio.to_thread(raw_loop, api, "bench", args.burst)
        emulator_raw = (cpu_seconds(k8s.emulator.pid) - emulator_before) / args.burst * 1000
        print(f"burst ({args.burst} messages): dispatcher {dispatcher_rate:.0f} Jobs/s, "
              f"raw create loop {baseline_rate:.0f} Jobs/s, ratio "
              f"{dispatcher_rate / baseline_rate:.2f}")
        print(f"dispatcher CPU per Job during the burst: {cpu_per_job:.2f} ms "
              f"(emulator: {emulator_per_job:.2f} ms per Job with the dispatcher, "
              f"{emulator_raw:.2f} ms with the raw loop)")
        print(f"dispatcher peak RSS during the run: {rss:.0f} MB")
        print(f"dispatcher CPU while idle with {args.idle + args.burst} Jobs in flight: "
              f"{idle_cpu:.1f} % of a core")
        print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--profile", metavar="FILE",
                        help="record a py-spy profile of the dispatcher during the burst")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
