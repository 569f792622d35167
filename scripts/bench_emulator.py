"""Throughput of the Kubernetes API emulator through the official client, from one thread.

Measures Job creates/s and gets/s with 0 and with 5,000 stored Jobs, for the emulator in a
background thread of the client's process (how most tests run it) and in its own process
(how dispatcher tests run it). `typed` calls let the client build its models, as
application code does; `raw` calls pass `_preload_content=False` and measure the HTTP round
trip alone. The baseline, measured in the same run, is a server on the same HTTP stack that
answers every request with one canned Job: it is what the client costs when the server does
no work. For the emulator process, its own CPU time per request is shown as well.

    .venv/bin/python scripts/bench_emulator.py [--jobs 5000] [--requests 1000] [--rounds 3]

Each figure is the median over the rounds: the wall-clock rate, and the CPU time the client
and the server spent per request (both processes, all threads), whose inverse is the rate a
free core would give. On a shared machine the wall-clock rate moves with everybody else's
load; the CPU figures hardly do. Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kubernetes.client

from tests.k8s_emulator import api_client, emulator_process, running_emulator
from tests.k8s_emulator.httpserver import HttpServer, Response

NAMESPACE = "bench"
METRICS = ("typed creates/s", "typed gets/s", "raw creates/s", "raw gets/s")


def job(name: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "runner", "image": "runner:1",
                                "env": [{"name": "SERVER_HANDLE", "value": name}]}]}}}}


@dataclass
class Figure:
    wall_rate: float  # requests per wall-clock second
    cpu_us: float  # client + server CPU microseconds per request
    server_cpu_us: float | None  # the emulator process alone, when it has its own


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(n: int, fn: Callable[[int], object], pid: int | None) -> Figure:
    server0 = cpu_seconds(pid) if pid else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        fn(i)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server = cpu_seconds(pid) - server0 if pid else None
    total = cpu + (server or 0.0)
    return Figure(n / wall, total / n * 1e6, server / n * 1e6 if server is not None else None)


def median(figures: list[Figure]) -> Figure:
    server = [f.server_cpu_us for f in figures if f.server_cpu_us is not None]
    return Figure(statistics.median(f.wall_rate for f in figures),
                  statistics.median(f.cpu_us for f in figures),
                  statistics.median(server) if server else None)


def run_rounds(url: str, n: int, rounds: int, tag: str, canned: bool = False,
               pid: int | None = None) -> dict[str, Figure]:
    with api_client(url) as client:
        batch = kubernetes.client.BatchV1Api(client)
        for i in range(50):  # warm the connection pool and the client's caches
            batch.create_namespaced_job(NAMESPACE, job(f"{tag}warm-{i}"))
        results: dict[str, list[Figure]] = {m: [] for m in METRICS}
        for r in range(rounds):
            def name(i: int, kind: str, r: int = r) -> str:
                return "canned" if canned else f"{tag}{r}-{kind}-{i}"
            results["typed creates/s"].append(measure(n, lambda i, name=name: (
                batch.create_namespaced_job(NAMESPACE, job(name(i, "t")))), pid))
            results["raw creates/s"].append(measure(n, lambda i, name=name: (
                batch.create_namespaced_job(NAMESPACE, job(name(i, "r")),
                                            _preload_content=False).data), pid))
            results["typed gets/s"].append(measure(n, lambda i, name=name: (
                batch.read_namespaced_job(name(i, "t"), NAMESPACE)), pid))
            results["raw gets/s"].append(measure(n, lambda i, name=name: (
                batch.read_namespaced_job(name(i, "r"), NAMESPACE,
                                          _preload_content=False).data), pid))
    return {m: median(v) for m, v in results.items()}


def fill(url: str, count: int, tag: str) -> None:
    with api_client(url) as client:
        batch = kubernetes.client.BatchV1Api(client)
        for i in range(count):
            batch.create_namespaced_job(NAMESPACE, job(f"{tag}fill-{i}"), _preload_content=False)


@contextmanager
def canned_server() -> Iterator[str]:
    """Answers everything with one Job as the emulator returns it."""
    with running_emulator() as emu, emu.api_client() as client:
        body = kubernetes.client.BatchV1Api(client).create_namespaced_job(
            NAMESPACE, job("canned"), _preload_content=False).data
    ready = threading.Event()
    state: dict = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        server = HttpServer(lambda req, conn: Response(201 if req.method == "POST" else 200,
                                                       body))
        loop.run_until_complete(server.listen())
        state.update(loop=loop, port=server.port)
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait()
    try:
        yield f"http://127.0.0.1:{state['port']}"
    finally:
        state["loop"].call_soon_threadsafe(state["loop"].stop)
        thread.join(5)


def show(label: str, figures: dict[str, Figure], baseline: dict[str, Figure] | None) -> None:
    print(label, flush=True)
    for metric in METRICS:
        fig = figures[metric]
        line = (f"  {metric:<16} {fig.wall_rate:6.0f} wall   "
                f"{fig.cpu_us:6.0f} us CPU/req = {1e6 / fig.cpu_us:6.0f} per CPU-s")
        if baseline:
            line += f" ({baseline[metric].cpu_us / fig.cpu_us:4.2f}x baseline)"
        if fig.server_cpu_us is not None:
            line += f"   emulator process {fig.server_cpu_us:4.0f} us CPU/req"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="stored Jobs for the big store")
    parser.add_argument("--requests", type=int, default=1000, help="requests per figure")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are shown")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, kubernetes client {kubernetes.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; ratios are "
          "against the canned baseline", flush=True)
    with canned_server() as url:
        baseline = run_rounds(url, args.requests, args.rounds, "b-", canned=True)
    show("baseline: canned answers, server in a thread", baseline, None)
    with running_emulator() as emu:
        for stored in (0, args.jobs):
            if stored:
                fill(emu.url, stored, "t-")
            figures = run_rounds(emu.url, args.requests, args.rounds, f"t{stored}-")
            show(f"emulator in a thread, {stored} Jobs stored", figures, baseline)
    with emulator_process() as proc:
        for stored in (0, args.jobs):
            if stored:
                fill(proc.url, stored, "p-")
            figures = run_rounds(proc.url, args.requests, args.rounds, f"p{stored}-",
                                 pid=proc.pid)
            show(f"emulator in its own process, {stored} Jobs stored", figures, baseline)


if __name__ == "__main__":
    main()
