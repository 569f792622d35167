#!/usr/bin/env python3
"""Dispatcher benchmark against a real Kubernetes API server: idle push-to-Job latency,
burst throughput and CPU per Job against the fastest raw create loops, idle CPU with the
Jobs in flight, peak RSS, time to exit after SIGTERM.

What runs: a real Redis; one control plane for the whole benchmark
(tests/support/controlplane.py: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler on 127.0.0.1, TLS with client certificates, RBAC, PodSecurity); the
dispatcher as its own process (kubernetes executor, the admin kubeconfig, the production
defaults but for the in-flight cap and a pending timeout longer than the run; its log lines,
at the default level, go to a file as a pod's go to its node's disk); and this
script, which pushes messages, runs the raw loops and watches Jobs appear (one watch over
every namespace, in a thread).

What else loads the machine during the measurement, as in a real cluster: the Job
controller creates a pod per Job (they stay Pending: there is no node), the scheduler tries
to place them and records FailedScheduling events, the dispatcher's watches see the Job
controller's status updates, and the garbage collector deletes the pods of the Jobs deleted
between phases. Before each measured phase the script waits until every Job has its pod
(the Job controller creates them at the controller manager's default client rate, 20
requests/s, so pods trail a burst by seconds) and the control plane is quiet (its processes
under 0.2 of a core for a second; at most 120 s in all), so each phase meets the same state
rather than the previous phase's tail; what the phase itself causes (the first pods of its
Jobs, their Events, the watches' traffic) falls inside it.

Each run has two namespaces of its own, deleted at its end (but the last run's, which go
with the control plane): the dispatcher's (its Jobs stay until the end of the run, so the
idle figures see them all in flight) and the raw loops' (emptied after each loop: its Jobs
deleted and their pods waited for), so etcd does not grow without bound.

Per run, after an unmeasured warm-up (each transport opens its connections): ``--idle``
single messages pushed at idle (push -> the Job's ADDED event on the watch), interleaved
with as many single raw creates through the dispatcher's transport (client-side create time,
and create start -> ADDED event); then ``--rounds`` rounds, each a burst of ``--burst``
messages to the dispatcher followed by two raw loops over as many Job bodies: the
dispatcher's own transport (dispatcher/kube/poster.py: pooled keep-alive POSTs of serialised
bodies on the event loop, DISPATCHER_DISPATCH_CONCURRENCY of them at once) and the official
kubernetes client (create_namespaced_job from as many threads). The faster of the two is the
baseline; the ratio is dispatcher Jobs/s over it; figures are medians over the rounds. CPU
is process CPU time (user + system, every thread, /proc/PID/stat) of the dispatcher and of
kube-apiserver, and the raw loops' own threads' CPU time; not wall time. The 1-minute load
average is printed beside every figure (the machine has 2 shared cores). Asserts nothing.

    .venv/bin/python scripts/bench_dispatcher.py [--runs 3] [--rounds 3] [--burst 1000]
        [--idle 300] [--idle-seconds 30] [--profile FILE] [--profile-idle FILE]
        [--split-cores]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis.asyncio as aioredis
import urllib3.exceptions
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from contracts.connections import RedisSettings, create_redis
from contracts.messages import parse_message
from dispatcher.jobspec import build_job
from dispatcher.kube.poster import AsyncPoster
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from tests.support import controlplane
from tests.support.controlplane import ControlPlane
from tests.support.dispatch import DispatcherProcess
from tests.support.services import redis_server

# The dispatcher's default DISPATCHER_METRICS_REFRESH_SECONDS (the test helper lowers it
# to 0.2 s so tests see gauges move; a benchmark measures what production runs).
METRICS_REFRESH_SECONDS = "5"
# Pods stay Pending (no node): the production 600 s pending timeout would fail Jobs in the
# middle of a long run and add that work to the figures.
PENDING_TIMEOUT_SECONDS = "86400"
CONCURRENCY = DispatcherSettings().dispatch_concurrency  # the dispatcher's creates at once
LATENCY_GOAL_MS = 2.0
RATIO_GOAL = 0.9
QUIET_CORES = 0.2
WARM_UP = 2 * CONCURRENCY  # Jobs the dispatcher creates before the measurements
TIMEOUTS = (5.0, 30.0)  # (connect, read) seconds for the raw creates


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


def count(cp: ControlPlane, path: str) -> int:
    """How many objects a list path holds, from one item and the remaining count."""
    listed: Any = cp.get(f"{path}?limit=1")
    return len(listed["items"]) + int(listed["metadata"].get("remainingItemCount") or 0)


def settle(cp: ControlPlane, namespaces: tuple[str, ...], timeout: float = 120.0) -> float:
    """Wait until the Job controller has made every Job's pod in ``namespaces`` (it creates
    them at the controller manager's client rate, 20 requests/s by default, so pods trail a
    burst by seconds), then until the control plane's processes use under QUIET_CORES for a
    second. Returns the seconds waited."""
    began = time.perf_counter()
    pids = list(cp.pids.values())
    while time.perf_counter() - began < timeout:
        if all(count(cp, f"/api/v1/namespaces/{ns}/pods")
               >= count(cp, f"/apis/batch/v1/namespaces/{ns}/jobs") for ns in namespaces):
            break
        time.sleep(1.0)
    while time.perf_counter() - began < timeout:
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(1.0)
        if sum(cpu_seconds(p) for p in pids) - before < QUIET_CORES:
            break
    return time.perf_counter() - began


def job_bodies(prefix: str, count: int, instance: str) -> list[dict[str, Any]]:
    settings, template = DispatcherSettings(instance=instance), JobTemplateSettings()
    return [build_job(parse_message(json.dumps(
        {"server_handle": f"{prefix}-{i}", "request_id": f"{prefix}-{i}"})).with_identity(),
        settings, template) for i in range(count)]


def job_name(handle: str, instance: str = "bench") -> str:
    body = parse_message(json.dumps({"server_handle": handle, "request_id": handle}))
    return str(build_job(body, DispatcherSettings(instance=instance),
                         JobTemplateSettings())["metadata"]["name"])


class Namespaces:
    """Namespaces of the benchmark: created with PodSecurity ``restricted`` (as the tests'),
    emptied between phases, deleted at the end of a run."""

    def __init__(self, core: client.CoreV1Api, batch: client.BatchV1Api) -> None:
        self.core = core
        self.batch = batch

    def create(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"}}})
        return name

    def empty(self, name: str, timeout: float = 180.0) -> float:
        """Delete every Job of the namespace and wait until they and their pods are gone
        (the garbage collector deletes the pods); returns the seconds it took. Quicker than
        deleting the namespace, whose controller waits out pod grace estimates."""
        began = time.perf_counter()
        self.batch.delete_collection_namespaced_job(name, propagation_policy="Background")
        while time.perf_counter() - began < timeout:
            jobs = self.batch.list_namespaced_job(name, limit=1)
            pods = self.core.list_namespaced_pod(name, limit=1)
            if not jobs.items and not pods.items:
                break
            time.sleep(0.5)
        return time.perf_counter() - began

    def delete(self, name: str) -> None:
        """Delete, without waiting (empty it first: what is left is the namespace itself)."""
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(name)


class JobWatch:
    """Records when each Job becomes visible in the API, through one watch over every
    namespace (no polling); reopened from the last resourceVersion when the server ends it."""

    def __init__(self, api: client.BatchV1Api) -> None:
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(api,), daemon=True)
        self._thread.start()

    def _run(self, api: client.BatchV1Api) -> None:
        with contextlib.suppress(urllib3.exceptions.HTTPError, OSError):
            self._watch(api)  # ends when the control plane stops

    def _watch(self, api: client.BatchV1Api) -> None:
        version = ""
        while True:
            resp = api.list_job_for_all_namespaces(
                watch=True, timeout_seconds=3600, resource_version=version or None,
                allow_watch_bookmarks=True, _preload_content=False)
            buffer = b""
            for chunk in resp.stream(65536):
                now = time.perf_counter()
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    event = json.loads(line)
                    metadata = event["object"].get("metadata") or {}
                    version = metadata.get("resourceVersion", version)
                    if event["type"] == "ADDED":
                        with self.cond:
                            self.seen[metadata["name"]] = now
                            self.cond.notify_all()
                    elif event["type"] == "ERROR":
                        version = ""  # expired: start again from now

    def wait_for(self, name: str, timeout: float = 30) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: name in self.seen, timeout):
                raise TimeoutError(f"Job {name} not seen within {timeout:g} s")
            return self.seen[name]

    def wait_names(self, names: list[str], timeout: float = 600) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: all(n in self.seen for n in names), timeout):
                missing = sum(n not in self.seen for n in names)
                raise TimeoutError(f"{missing} of {len(names)} Jobs not seen within "
                                   f"{timeout:g} s")
            return max(self.seen[n] for n in names)


def make_poster(configuration: client.Configuration) -> AsyncPoster:
    """The dispatcher's create transport, set up as dispatcher/kube/client.py does."""
    api_client = client.ApiClient(configuration)

    def auth_headers() -> dict[str, str]:
        headers: dict[str, str] = {}
        api_client.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    return AsyncPoster(configuration, auth_headers, api_client.user_agent,
                       max_idle=CONCURRENCY + 2)


@dataclass
class RawFigures:
    rate: float  # Jobs/s, first create sent to last create answered
    cpu_ms: float  # CPU per Job of the loop's own thread(s)
    p99_ms: float  # client-side create latency
    apiserver_ms: float  # kube-apiserver CPU per Job during the loop


async def poster_loop(poster: AsyncPoster, namespace: str, bodies: list[dict[str, Any]],
                      apiserver: int) -> RawFigures:
    """CONCURRENCY tasks POSTing serialised bodies through the dispatcher's transport, on
    this thread's event loop (nothing else runs on it meanwhile)."""
    payloads = [json.dumps(b, separators=(",", ":")).encode() for b in bodies]
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    latencies: list[float] = []
    queue = iter(payloads)

    async def worker() -> None:
        for payload in queue:
            began = time.perf_counter()
            await poster.post(path, payload, "", TIMEOUTS)
            latencies.append((time.perf_counter() - began) * 1000)

    api_before, cpu = cpu_seconds(apiserver), time.thread_time()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
    n = len(bodies)
    return RawFigures(n / elapsed, cpu / n * 1000, percentile(latencies, 0.99),
                      (cpu_seconds(apiserver) - api_before) / n * 1000)


def client_loop(api: client.BatchV1Api, namespace: str, bodies: list[dict[str, Any]],
                apiserver: int) -> RawFigures:
    """CONCURRENCY threads calling the official client's create_namespaced_job."""
    latencies: list[float] = []
    cpu_total = [0.0]
    lock = threading.Lock()
    queue = iter(bodies)

    def worker() -> None:
        cpu = time.thread_time()
        mine = []
        while True:
            with lock:
                body = next(queue, None)
            if body is None:
                break
            began = time.perf_counter()
            response = api.create_namespaced_job(namespace, body, _preload_content=False,
                                                 _request_timeout=TIMEOUTS)
            _ = response.data  # read, then hand the connection back to the pool
            response.release_conn()
            mine.append((time.perf_counter() - began) * 1000)
        with lock:
            latencies.extend(mine)
            cpu_total[0] += time.thread_time() - cpu

    api_before = cpu_seconds(apiserver)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        start = time.perf_counter()
        futures = [pool.submit(worker) for _ in range(CONCURRENCY)]
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - start
    n = len(bodies)
    return RawFigures(n / elapsed, cpu_total[0] / n * 1000, percentile(latencies, 0.99),
                      (cpu_seconds(apiserver) - api_before) / n * 1000)


@dataclass
class Round:
    dispatcher_rate: float
    dispatcher_cpu_ms: float
    dispatcher_apiserver_ms: float
    redis_ms: float  # Redis server CPU per Job of the burst (the raw loops use none)
    poster: RawFigures
    official: RawFigures
    load: str

    @property
    def baseline(self) -> float:
        return max(self.poster.rate, self.official.rate)

    @property
    def ratio(self) -> float:
        return self.dispatcher_rate / self.baseline


@dataclass
class RunFigures:
    idle_p50: float = 0.0
    idle_p99: float = 0.0
    raw_idle_p99: float = 0.0
    raw_idle_seen_p99: float = 0.0
    idle_load: str = ""
    rounds: list[Round] = field(default_factory=list)
    idle_cpu: float = 0.0
    in_flight: int = 0
    rss: float = 0.0
    exit_seconds: float | None = None

    def summary(self, run: int) -> str:
        med = statistics.median
        r = self.rounds
        exit_text = f"{self.exit_seconds:.1f} s" if self.exit_seconds is not None \
            else "did not exit within 60 s"
        return (
            f"run {run}: ratio {med(x.ratio for x in r):.2f} (goal >= {RATIO_GOAL}; rounds "
            f"{', '.join(f'{x.ratio:.2f}' for x in r)}); dispatcher "
            f"{med(x.dispatcher_rate for x in r):.0f} Jobs/s, raw loops "
            f"{med(x.poster.rate for x in r):.0f} (poster) / "
            f"{med(x.official.rate for x in r):.0f} (official client) Jobs/s; dispatcher CPU "
            f"per Job {med(x.dispatcher_cpu_ms for x in r):.2f} ms (raw loops "
            f"{med(x.poster.cpu_ms for x in r):.2f} / {med(x.official.cpu_ms for x in r):.2f}"
            f" ms), Redis server CPU per Job {med(x.redis_ms for x in r):.2f} ms; "
            f"kube-apiserver CPU per Job {med(x.dispatcher_apiserver_ms for x in r):.2f}"
            f" ms (raw loops {med(x.poster.apiserver_ms for x in r):.2f} / "
            f"{med(x.official.apiserver_ms for x in r):.2f} ms); burst create p99 "
            f"{med(x.poster.p99_ms for x in r):.1f} / {med(x.official.p99_ms for x in r):.1f}"
            f" ms; idle push-to-Job p99 {self.idle_p99:.1f} ms against raw create p99 "
            f"{self.raw_idle_p99:.1f} ms (goal <= {self.raw_idle_p99 + LATENCY_GOAL_MS:.1f}"
            f" ms; raw create to ADDED event p99 {self.raw_idle_seen_p99:.1f} ms); idle CPU "
            f"with {self.in_flight} in flight {self.idle_cpu:.1f} % of a core; peak RSS "
            f"{self.rss:.0f} MB; exit after SIGTERM {exit_text} [{self.idle_load} at idle "
            f"latency, {r[-1].load} at last round]")


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


@dataclass
class Bench:
    cp: ControlPlane
    redis_url: str
    configuration: client.Configuration
    batch: client.BatchV1Api
    namespaces: Namespaces
    watch: JobWatch
    poster: AsyncPoster

    quiet: tuple[str, ...] = ()  # the namespaces settle() waits on: this run's

    @property
    def apiserver(self) -> int:
        return self.cp.pids["kube-apiserver"]


async def warm_up(bench: Bench, args: argparse.Namespace, run: int, raw_ns: str) -> None:
    """Not measured: every transport opens its connections (TLS with client certificates)
    before the figures, so no round pays for them: the dispatcher creates WARM_UP Jobs, each
    raw loop sends CONCURRENCY dry-run creates at once."""
    redis = create_redis(RedisSettings(url=bench.redis_url))
    handles = [f"warm-{run}-{i}" for i in range(WARM_UP)]
    await redis.lpush(RedisSettings().keys.queue,
                      *(json.dumps({"server_handle": h, "request_id": h}) for h in handles))
    await asyncio.to_thread(bench.watch.wait_names, [job_name(h) for h in handles], 120)
    await redis.aclose()
    bodies = job_bodies(f"warm-{run}", CONCURRENCY, "baseline")
    path = f"/apis/batch/v1/namespaces/{raw_ns}/jobs"
    await asyncio.gather(*(bench.poster.post(path, json.dumps(b).encode(), "dryRun=All",
                                             TIMEOUTS) for b in bodies))

    def official(body: dict[str, Any]) -> None:
        bench.batch.create_namespaced_job(raw_ns, body, dry_run="All",
                                          _request_timeout=TIMEOUTS)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(official, bodies))


async def idle_latency(bench: Bench, args: argparse.Namespace, run: int, raw_ns: str,
                       figures: RunFigures) -> None:
    """Single messages pushed at idle, interleaved with single raw creates through the
    dispatcher's transport in a namespace of their own."""
    redis = create_redis(RedisSettings(url=bench.redis_url))
    keys = RedisSettings().keys
    raw_bodies = job_bodies(f"rawidle-{run}", args.idle, "baseline")
    path = f"/apis/batch/v1/namespaces/{raw_ns}/jobs"
    await asyncio.to_thread(settle, bench.cp, bench.quiet)
    pushes, raw, raw_seen = [], [], []
    for i in range(args.idle):
        handle = f"idle-{run}-{i}"
        body = json.dumps({"server_handle": handle, "request_id": handle})
        name = job_name(handle)
        start = time.perf_counter()
        await redis.lpush(keys.queue, body)
        seen = await asyncio.to_thread(bench.watch.wait_for, name)
        pushes.append((seen - start) * 1000)
        await asyncio.sleep(0.01)  # idle between messages
        payload = json.dumps(raw_bodies[i], separators=(",", ":")).encode()
        start = time.perf_counter()
        await bench.poster.post(path, payload, "", TIMEOUTS)
        raw.append((time.perf_counter() - start) * 1000)
        seen = await asyncio.to_thread(bench.watch.wait_for,
                                       raw_bodies[i]["metadata"]["name"])
        raw_seen.append((seen - start) * 1000)
        await asyncio.sleep(0.01)
    await redis.aclose()
    figures.idle_p50 = statistics.median(pushes)
    figures.idle_p99 = percentile(pushes, 0.99)
    figures.raw_idle_p99 = percentile(raw, 0.99)
    figures.raw_idle_seen_p99 = percentile(raw_seen, 0.99)
    figures.idle_load = load()
    verdict = "met" if figures.idle_p99 <= figures.raw_idle_p99 + LATENCY_GOAL_MS else "missed"
    print(f"  idle push -> Job ADDED on the watch ({args.idle} messages): p50 "
          f"{figures.idle_p50:.1f} ms, p99 {figures.idle_p99:.1f} ms, max {max(pushes):.1f} ms"
          f" ({figures.idle_load})")
    print(f"  idle raw create, interleaved (dispatcher's transport, one at a time): "
          f"client-side p50 {statistics.median(raw):.1f} ms, p99 {figures.raw_idle_p99:.1f} "
          f"ms; create start -> ADDED p99 {figures.raw_idle_seen_p99:.1f} ms ({load()})")
    print(f"  goal: push-to-Job p99 <= raw create p99 + {LATENCY_GOAL_MS:g} ms = "
          f"{figures.raw_idle_p99 + LATENCY_GOAL_MS:.1f} ms: {verdict} "
          f"({figures.idle_p99:.1f} ms)")
    taken = await asyncio.to_thread(bench.namespaces.empty, raw_ns)
    print(f"  (raw Jobs and their pods deleted in {taken:.1f} s)")


def api_calls(dispatcher: DispatcherProcess) -> dict[str, float]:
    """The dispatcher's Kubernetes API responses so far, by verb (its /metrics)."""
    counts: dict[str, float] = {}
    for line in dispatcher.metrics().splitlines():
        if line.startswith("infra_service_kube_api_responses_total{"):
            verb = line.split('verb="', 1)[1].split('"', 1)[0]
            counts[verb] = counts.get(verb, 0) + float(line.rsplit(" ", 1)[1])
    return counts


async def redis_cpu_seconds(redis: aioredis.Redis) -> float:
    """The Redis server's CPU time (user + system, every thread), from INFO."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def burst(bench: Bench, args: argparse.Namespace, run: int, round_no: int,
                dispatcher: DispatcherProcess) -> tuple[float, float, float, float, str]:
    """--burst messages at once to the dispatcher: (Jobs/s, CPU ms per Job of the dispatcher,
    of kube-apiserver, of the Redis server)."""
    redis = create_redis(RedisSettings(url=bench.redis_url))
    keys = RedisSettings().keys
    handles = [f"burst-{run}-{round_no}-{i}" for i in range(args.burst)]
    payloads = [json.dumps({"server_handle": h, "request_id": h}) for h in handles]
    names = [job_name(h) for h in handles]
    assert dispatcher.proc is not None
    pid = dispatcher.proc.pid
    await asyncio.to_thread(settle, bench.cp, bench.quiet)
    profiler = profile(pid, args.profile) if args.profile and round_no == 0 else None
    if profiler is not None:
        await asyncio.sleep(1.0)
    calls_before = await asyncio.to_thread(api_calls, dispatcher)
    cpu_before, api_before = cpu_seconds(pid), cpu_seconds(bench.apiserver)
    redis_before = await redis_cpu_seconds(redis)
    start = time.perf_counter()
    for chunk in range(0, len(payloads), 500):
        await redis.lpush(keys.queue, *payloads[chunk:chunk + 500])
    last = await asyncio.to_thread(bench.watch.wait_names, names)
    # The last Job is visible once created; its ack follows within a few ms.
    await asyncio.sleep(0.2)
    cpu = (cpu_seconds(pid) - cpu_before) / args.burst * 1000
    api = (cpu_seconds(bench.apiserver) - api_before) / args.burst * 1000
    redis_cpu = (await redis_cpu_seconds(redis) - redis_before) / args.burst * 1000
    end_profile(profiler, args.profile)
    await redis.aclose()
    calls = await asyncio.to_thread(api_calls, dispatcher)
    text = ", ".join(f"{verb} {n - calls_before.get(verb, 0):.0f}"
                     for verb, n in sorted(calls.items()) if n > calls_before.get(verb, 0))
    return args.burst / (last - start), cpu, api, redis_cpu, text


async def raw_round(bench: Bench, args: argparse.Namespace, run: int, round_no: int,
                    kind: str, namespace: str) -> RawFigures:
    bodies = job_bodies(f"raw{kind}-{run}-{round_no}", args.burst, "baseline")
    await asyncio.to_thread(settle, bench.cp, bench.quiet)
    if kind == "poster":
        figures = await poster_loop(bench.poster, namespace, bodies, bench.apiserver)
    else:
        figures = await asyncio.to_thread(client_loop, bench.batch, namespace, bodies,
                                          bench.apiserver)
    await asyncio.to_thread(bench.namespaces.empty, namespace)
    return figures


def count_objects(bench: Bench, namespace: str) -> str:
    """Jobs, pods and Events of a namespace (Events: the Job controller's and the
    scheduler's)."""
    core = bench.namespaces.core
    counts = []
    for kind, fn in (("Jobs", bench.batch.list_namespaced_job),
                     ("pods", core.list_namespaced_pod),
                     ("Events", core.list_namespaced_event)):
        total, token = 0, None
        while True:
            response = fn(namespace, limit=500, _continue=token)
            total += len(response.items)
            token = response.metadata._continue
            if not token:
                break
        counts.append(f"{total} {kind}")
    return ", ".join(counts)


async def one_run(bench: Bench, args: argparse.Namespace, run: int, last: bool
                  ) -> RunFigures:
    figures = RunFigures()
    namespace = bench.namespaces.create(f"bench-{run}")
    raw_ns = bench.namespaces.create(f"bench-{run}-raw")
    bench.quiet = (namespace, raw_ns)
    total = WARM_UP + args.idle + args.burst * args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        dispatcher = DispatcherProcess({
            "REDIS_URL": bench.redis_url,
            "DISPATCHER_KUBECONFIG": str(bench.cp.kubeconfig()),
            "DISPATCHER_NAMESPACE": namespace, "DISPATCHER_INSTANCE": "bench",
            "DISPATCHER_MAX_IN_FLIGHT": str(total + 10),
            "DISPATCHER_PENDING_TIMEOUT_SECONDS": PENDING_TIMEOUT_SECONDS,
            "DISPATCHER_METRICS_REFRESH_SECONDS": METRICS_REFRESH_SECONDS,
        }, Path(tmp) / "dispatcher.log").start()
        try:
            dispatcher.wait_ready(60)
            assert dispatcher.proc is not None
            pid = dispatcher.proc.pid
            await warm_up(bench, args, run, raw_ns)
            await idle_latency(bench, args, run, raw_ns, figures)

            for round_no in range(args.rounds):
                rate, cpu, api, redis_cpu, calls = await burst(bench, args, run, round_no,
                                                               dispatcher)
                print(f"  burst {round_no + 1} ({args.burst} messages): dispatcher "
                      f"{rate:.0f} Jobs/s, {cpu:.2f} ms CPU per Job, Redis server "
                      f"{redis_cpu:.2f} ms, kube-apiserver {api:.2f} ms CPU per Job; the "
                      f"dispatcher's API calls: {calls} ({load()})")
                # Alternate which raw loop goes first, so neither always follows the burst.
                kinds = ["poster", "official"] if round_no % 2 == 0 else ["official", "poster"]
                raws = {}
                for kind in kinds:
                    raws[kind] = await raw_round(bench, args, run, round_no, kind,
                                                 raw_ns)
                    r = raws[kind]
                    label = "dispatcher's transport" if kind == "poster" else "official client"
                    print(f"    raw loop, {label}, {CONCURRENCY} at once: {r.rate:.0f} Jobs/s,"
                          f" {r.cpu_ms:.2f} ms CPU per Job, create p99 {r.p99_ms:.1f} ms, "
                          f"kube-apiserver {r.apiserver_ms:.2f} ms CPU per Job ({load()})")
                result = Round(rate, cpu, api, redis_cpu, raws["poster"], raws["official"], load())
                figures.rounds.append(result)
                fastest = "dispatcher's transport" if result.poster.rate >= \
                    result.official.rate else "official client"
                print(f"    ratio to the fastest raw loop ({fastest}): {result.ratio:.2f} "
                      f"(goal >= {RATIO_GOAL}) ({result.load})")

            print(f"  the dispatcher's namespace holds {count_objects(bench, namespace)}: what "
                  f"its three watches (Jobs, pods, Events) were sent ({load()})")
            figures.rss = peak_rss_mb(pid)
            figures.in_flight = total
            await asyncio.to_thread(settle, bench.cp, bench.quiet)
            profiler = profile(pid, args.profile_idle) if args.profile_idle else None
            idle_before = cpu_seconds(pid)
            await asyncio.sleep(args.idle_seconds)
            figures.idle_cpu = (cpu_seconds(pid) - idle_before) / args.idle_seconds * 100
            end_profile(profiler, args.profile_idle)
            print(f"  dispatcher CPU while idle with {figures.in_flight} Jobs in flight: "
                  f"{figures.idle_cpu:.1f} % of a core over {args.idle_seconds:g} s ({load()});"
                  f" peak RSS {figures.rss:.0f} MB")

            # SIGTERM with every Job in flight and the watches open: time to exit.
            started = time.perf_counter()
            dispatcher.proc.send_signal(signal.SIGTERM)
            try:
                dispatcher.proc.wait(60)
                figures.exit_seconds = time.perf_counter() - started
                print(f"  exit after SIGTERM: {figures.exit_seconds:.2f} s, code "
                      f"{dispatcher.proc.returncode} ({load()})")
            except subprocess.TimeoutExpired:
                dump = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump",
                                       "--pid", str(pid)], capture_output=True, text=True)
                print("  did not exit within 60 s of SIGTERM; its threads:\n" + dump.stdout)
        except BaseException:
            print(dispatcher.logs()[-3000:])
            raise
        finally:
            dispatcher.kill()
    if last:
        # The control plane stops next and takes them with it: deleting thousands of Jobs
        # and their pods first would only add minutes to the run.
        return figures
    taken = await asyncio.to_thread(bench.namespaces.empty, namespace)
    print(f"  ({total} Jobs and their pods deleted in {taken:.1f} s)")
    bench.namespaces.delete(namespace)
    bench.namespaces.delete(raw_ns)
    return figures


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Processes started inside run on ``cpus`` (they inherit the calling thread's mask)."""
    if cpus is None:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def split_cores(args: argparse.Namespace) -> tuple[set[int] | None, set[int] | None]:
    """(control plane's CPUs, everyone else's): with --split-cores the control plane gets
    CPU 0 and Redis, the dispatcher, this script and its raw loops CPU 1, as in a cluster
    where the dispatcher does not share the API server's cores."""
    if not args.split_cores:
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--split-cores needs 2 CPUs; this process may use " + str(cpus))
    return {cpus[0]}, set(cpus[1:])


async def bench_all(args: argparse.Namespace) -> None:
    control_cpus, other_cpus = split_cores(args)
    if other_cpus is not None:
        os.sched_setaffinity(0, other_cpus)  # this thread, and what it starts from now on
        print(f"cores: the control plane on CPU {sorted(control_cpus or ())}; Redis, the "
              f"dispatcher, this script and its raw loops on CPU {sorted(other_cpus)}")
    print(f"starting the control plane ({load()})")
    with contextlib.ExitStack() as stack:
        redis_srv = stack.enter_context(redis_server())
        with pinned(control_cpus):
            cp = stack.enter_context(controlplane.running())
        print(f"control plane started in {cp.started_in:.1f} s ({load()})")
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(cp.kubeconfig()),
                                client_configuration=configuration)
        configuration.connection_pool_maxsize = CONCURRENCY + 2
        api_client = client.ApiClient(configuration)
        # The watch has a client (and connection pool) of its own.
        watch = JobWatch(client.BatchV1Api(client.ApiClient(configuration)))
        poster = make_poster(configuration)
        batch = client.BatchV1Api(api_client)
        bench = Bench(cp, redis_srv.url, configuration, batch,
                      Namespaces(client.CoreV1Api(api_client), batch), watch, poster)
        summaries = []
        try:
            for run in range(1, args.runs + 1):
                print(f"run {run} of {args.runs} ({load()})")
                figures = await one_run(bench, args, run, last=run == args.runs)
                summaries.append(figures.summary(run))
        finally:
            poster.close()
            dead = [name for name, alive in cp.alive().items() if not alive]
            if dead:
                print(f"control plane components died during the benchmark: {dead}")
        print("\n".join(summaries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="complete runs in a row")
    parser.add_argument("--rounds", type=int, default=3,
                        help="bursts per run, each followed by the raw loops")
    # Shorter bursts last under a second: the control plane's own periodic work then falls
    # into some phases and not others, and moves single rounds by a third.
    parser.add_argument("--burst", type=int, default=1000)
    # The p99 of 300 is their fourth-largest figure (of 200, the third): a single stall
    # more or less moves it less.
    parser.add_argument("--idle", type=int, default=300,
                        help="single messages at idle (and as many single raw creates)")
    parser.add_argument("--idle-seconds", type=float, default=30.0,
                        help="idle CPU measured over this long with every Job in flight")
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy profile of the dispatcher during the first burst")
    parser.add_argument("--profile-idle", metavar="FILE",
                        help="py-spy profile of the dispatcher idle with every Job in flight")
    parser.add_argument("--split-cores", action="store_true",
                        help="the control plane on one CPU, everything else on the other")
    asyncio.run(bench_all(parser.parse_args()))


if __name__ == "__main__":
    main()
