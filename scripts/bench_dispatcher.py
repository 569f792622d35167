#!/usr/bin/env python3
"""Dispatcher benchmark: idle latency, burst throughput and CPU per Job against a raw create
loop, idle CPU with thousands of Jobs in flight, peak RSS, time to exit after SIGTERM.

Each run starts a real Redis, the Kubernetes API emulator (its own process) and the
dispatcher (its own process, kubernetes executor, real client, the production defaults
but for the in-flight cap). Bursts alternate with rounds of the raw loop on the same
emulator, so both meet the same machine load; the figures are medians over the rounds.
CPU is the dispatcher process's own CPU time (user + system, every thread) from
/proc/PID/stat, not wall time. Prints figures with the load average beside each; asserts
nothing.

    .venv/bin/python scripts/bench_dispatcher.py [--runs 3] [--rounds 3] [--burst 2000]
        [--idle 200] [--profile FILE] [--profile-idle FILE]
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
from dataclasses import dataclass, field
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

NAMESPACE = "bench"
# The dispatcher's default DISPATCHER_METRICS_REFRESH_SECONDS (the test helper lowers it
# to 0.2 s so tests see gauges move; a benchmark measures what production runs).
METRICS_REFRESH_SECONDS = "5"
IDLE_SECONDS = 30.0  # two reconcile passes (15 s) and six metrics refreshes (5 s)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_bodies(start: int, count: int) -> list[dict[str, object]]:
    settings, template = DispatcherSettings(instance="baseline"), JobTemplateSettings()
    return [build_job(parse_message(json.dumps(
        {"server_handle": f"raw-{i}", "request_id": f"raw-{i}"})).with_identity(),
        settings, template) for i in range(start, start + count)]


def raw_loop(api: client.BatchV1Api, bodies: list[dict[str, object]]) -> tuple[float, float]:
    """The baseline: Job bodies created back to back with the same client, one thread.
    Returns (Jobs/s, CPU seconds of this thread: the bench's watch thread is not in it)."""
    start, cpu = time.perf_counter(), time.thread_time()
    for body in bodies:
        response = api.create_namespaced_job(NAMESPACE, body, _preload_content=False)
        _ = response.data  # read, then hand the connection back to the pool
        response.release_conn()
    elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
    return len(bodies) / elapsed, cpu


class JobWatch:
    """Records when each Job becomes visible in the API, through a watch (no polling)."""

    def __init__(self, api: client.BatchV1Api) -> None:
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(api,), daemon=True)
        self._thread.start()

    def _run(self, api: client.BatchV1Api) -> None:
        resp = api.list_namespaced_job(NAMESPACE, watch=True, timeout_seconds=3600,
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

    def wait_names(self, names: list[str], timeout: float = 600) -> float:
        with self.cond:
            self.cond.wait_for(lambda: all(n in self.seen for n in names), timeout)
            return max(self.seen[n] for n in names)


@dataclass
class RunFigures:
    idle_p50: float = 0.0
    idle_p99: float = 0.0
    idle_load: str = ""
    rounds: list[tuple[float, float, float, float, str]] = field(default_factory=list)
    idle_cpu: float = 0.0
    idle_cpu_load: str = ""
    in_flight: int = 0
    rss: float = 0.0
    exit_seconds: float | None = None

    def summary(self, run: int) -> str:
        ratios = [d / r for d, _, r, _, _ in self.rounds]
        cpu = [c for _, c, _, _, _ in self.rounds]
        raw_cpu = [c for _, _, _, c, _ in self.rounds]
        exit_text = f"{self.exit_seconds:.1f} s" if self.exit_seconds is not None \
            else "did not exit within 60 s"
        return (f"run {run}: ratio {statistics.median(ratios):.2f} "
                f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}); dispatcher CPU per Job "
                f"{statistics.median(cpu):.2f} ms (raw loop {statistics.median(raw_cpu):.2f} ms)"
                f"; idle p99 {self.idle_p99:.1f} ms; idle CPU with {self.in_flight} in flight "
                f"{self.idle_cpu:.1f} % of a core; peak RSS {self.rss:.0f} MB; exit after "
                f"SIGTERM {exit_text}")


def profile(pid: int, path: str) -> subprocess.Popen[bytes]:
    """py-spy samples the dispatcher (collapsed stacks, GIL holder only: CPU in Python)."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
         "--rate", "250", "--format", "raw", "--gil", "--output", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def end_profile(profiler: subprocess.Popen[bytes] | None, path: str | None) -> None:
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(30)
        print(f"  profile (collapsed stacks): {path}")


async def one_run(args: argparse.Namespace) -> RunFigures:
    figures = RunFigures()
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_srv, \
            kube(Path(tmp)) as k8s:
        redis_env = {"REDIS_URL": redis_srv.url}
        os.environ.update(redis_env)
        redis = create_redis(RedisSettings())
        keys = RedisSettings().keys
        api = k8s.batch
        total = args.idle + args.burst * args.rounds
        dispatcher = DispatcherProcess({
            **redis_env, "DISPATCHER_KUBECONFIG": str(k8s.kubeconfig),
            "DISPATCHER_NAMESPACE": NAMESPACE, "DISPATCHER_INSTANCE": "bench",
            "DISPATCHER_MAX_IN_FLIGHT": str(total + 10),
            "DISPATCHER_LOG_LEVEL": "WARNING",
            "DISPATCHER_METRICS_REFRESH_SECONDS": METRICS_REFRESH_SECONDS,
        }, Path(tmp) / "dispatcher.log").start()
        dispatcher.wait_ready(60)
        assert dispatcher.proc is not None
        pid = dispatcher.proc.pid

        watch = JobWatch(api)
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
        figures.idle_p50 = statistics.median(latencies)
        figures.idle_p99 = percentile(latencies, 0.99)
        figures.idle_load = load()
        print(f"  idle latency ({args.idle} messages, push -> Job visible): "
              f"p50 {figures.idle_p50:.1f} ms, p99 {figures.idle_p99:.1f} ms, "
              f"max {max(latencies):.1f} ms ({figures.idle_load})")

        settings = DispatcherSettings(instance="bench")
        template = JobTemplateSettings()
        for round_no in range(args.rounds):
            # Burst: N messages at once; the dispatcher's Jobs/s and CPU per Job.
            ids = [f"burst-{round_no}-{i}" for i in range(args.burst)]
            payloads = [json.dumps({"server_handle": i, "request_id": i}) for i in ids]
            names = [build_job(parse_message(p), settings, template)["metadata"]["name"]
                     for p in payloads]
            profiler = profile(pid, args.profile) if args.profile and round_no == 0 else None
            if profiler is not None:
                await asyncio.sleep(1.0)
            cpu_before = cpu_seconds(pid)
            emulator_before = cpu_seconds(k8s.emulator.pid)
            start = time.perf_counter()
            for chunk in range(0, len(payloads), 500):
                await redis.lpush(keys.queue, *payloads[chunk:chunk + 500])
            last = await asyncio.to_thread(watch.wait_names, names)
            # The last Job is visible once created; its ack follows within a few ms.
            await asyncio.sleep(0.2)
            dispatcher_rate = args.burst / (last - start)
            cpu_per_job = (cpu_seconds(pid) - cpu_before) / args.burst * 1000
            emulator_per_job = (cpu_seconds(k8s.emulator.pid) - emulator_before) \
                / args.burst * 1000
            end_profile(profiler, args.profile)

            bodies = raw_bodies(round_no * args.burst, args.burst)
            emulator_before = cpu_seconds(k8s.emulator.pid)
            baseline_rate, raw_cpu = await asyncio.to_thread(raw_loop, api, bodies)
            emulator_raw = (cpu_seconds(k8s.emulator.pid) - emulator_before) \
                / args.burst * 1000
            raw_per_job = raw_cpu / args.burst * 1000
            round_load = load()
            figures.rounds.append((dispatcher_rate, cpu_per_job, baseline_rate, raw_per_job,
                                   round_load))
            print(f"  burst {round_no + 1} ({args.burst} messages): dispatcher "
                  f"{dispatcher_rate:.0f} Jobs/s, {cpu_per_job:.2f} ms CPU per Job; raw loop "
                  f"{baseline_rate:.0f} Jobs/s, {raw_per_job:.2f} ms CPU per Job; ratio "
                  f"{dispatcher_rate / baseline_rate:.2f}; emulator {emulator_per_job:.2f} / "
                  f"{emulator_raw:.2f} ms per Job ({round_load})")

        figures.rss = peak_rss_mb(pid)
        figures.in_flight = args.idle + args.burst * args.rounds
        profiler = profile(pid, args.profile_idle) if args.profile_idle else None
        idle_before = cpu_seconds(pid)
        await asyncio.sleep(IDLE_SECONDS)
        figures.idle_cpu = (cpu_seconds(pid) - idle_before) / IDLE_SECONDS * 100
        figures.idle_cpu_load = load()
        end_profile(profiler, args.profile_idle)
        print(f"  dispatcher CPU while idle with {figures.in_flight} Jobs in flight: "
              f"{figures.idle_cpu:.1f} % of a core ({figures.idle_cpu_load}); peak RSS "
              f"{figures.rss:.0f} MB")

        # SIGTERM with every Job in flight and both watches open: time to exit.
        started = time.perf_counter()
        dispatcher.proc.send_signal(signal.SIGTERM)
        try:
            dispatcher.proc.wait(60)
            figures.exit_seconds = time.perf_counter() - started
            print(f"  exit after SIGTERM: {figures.exit_seconds:.2f} s, code "
                  f"{dispatcher.proc.returncode} ({load()})")
        except subprocess.TimeoutExpired:
            # Where is it stuck? Every thread's stack, then kill it.
            dump = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump",
                                   "--pid", str(pid)], capture_output=True, text=True)
            print("  did not exit within 60 s of SIGTERM; its threads:\n" + dump.stdout)
            dispatcher.kill()
        await redis.aclose()
    return figures


async def bench(args: argparse.Namespace) -> None:
    summaries = []
    for run in range(1, args.runs + 1):
        print(f"run {run} of {args.runs} ({load()})")
        figures = await one_run(args)
        summaries.append(figures.summary(run))
    print("\n".join(summaries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="complete runs in a row")
    parser.add_argument("--rounds", type=int, default=3,
                        help="bursts per run, each followed by a raw-loop round")
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy profile of the dispatcher during the first burst")
    parser.add_argument("--profile-idle", metavar="FILE",
                        help="py-spy profile of the dispatcher idle with every Job in flight")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
