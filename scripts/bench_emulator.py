"""Throughput of the Kubernetes API emulator through the official client, from one thread.

Measures Job creates/s and gets/s with 0 and with 5,000 stored Jobs, for the emulator in a
background thread of the client's process (how most tests run it) and in its own process
(how dispatcher tests run it). `typed` calls let the client build its models, as
application code does; `raw` calls pass `_preload_content=False` and measure the HTTP round
trip alone. The baseline, measured in the same run, is a server on the same HTTP stack that
answers every request with one canned Job: it is what the client costs when the server does
no work. For the emulator process, its own CPU time per request is shown as well.

    .venv/bin/python scripts/bench_emulator.py [--jobs 5000] [--requests 1000] [--rounds 3]

Each figure is the median over the rounds. Prints figures only; nothing is asserted.
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


def rate(n: int, fn: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_rounds(url: str, n: int, rounds: int, tag: str, canned: bool = False,
               pid: int | None = None) -> tuple[dict[str, float], float | None]:
    """Median rate per metric, and the server's CPU microseconds per request if known."""
    with api_client(url) as client:
        batch = kubernetes.client.BatchV1Api(client)
        for i in range(50):  # warm the connection pool and the client's caches
            batch.create_namespaced_job(NAMESPACE, job(f"{tag}warm-{i}"))
        results: dict[str, list[float]] = {m: [] for m in METRICS}
        cpu_start = cpu_seconds(pid) if pid else 0.0
        requests = 0
        for r in range(rounds):
            def name(i: int, kind: str, r: int = r) -> str:
                return "canned" if canned and kind == "get" else f"{tag}{r}-{kind}-{i}"
            results["typed creates/s"].append(rate(n, lambda i, name=name: (
                batch.create_namespaced_job(NAMESPACE, job(name(i, "t"))))))
            results["raw creates/s"].append(rate(n, lambda i, name=name: (
                batch.create_namespaced_job(NAMESPACE, job(name(i, "r")),
                                            _preload_content=False).data)))
            results["typed gets/s"].append(rate(n, lambda i, name=name: (
                batch.read_namespaced_job(name(i, "t") if not canned else "canned",
                                          NAMESPACE))))
            results["raw gets/s"].append(rate(n, lambda i, name=name: (
                batch.read_namespaced_job(name(i, "r") if not canned else "canned",
                                          NAMESPACE, _preload_content=False).data)))
            requests += 4 * n
        cpu = (cpu_seconds(pid) - cpu_start) / requests * 1e6 if pid else None
    return {m: statistics.median(v) for m, v in results.items()}, cpu


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


def show(label: str, figures: dict[str, float], baseline: dict[str, float] | None,
         cpu: float | None) -> None:
    parts = [f"{label:<30}"]
    for metric in METRICS:
        text = f"{metric} {figures[metric]:6.0f}"
        if baseline:
            text += f" ({figures[metric] / baseline[metric]:4.2f}x)"
        parts.append(text)
    if cpu is not None:
        parts.append(f"server CPU {cpu:4.0f} us/req")
    print("  ".join(parts), flush=True)


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
        baseline, _ = run_rounds(url, args.requests, args.rounds, "b-", canned=True)
    show("baseline: canned answers", baseline, None, None)
    with running_emulator() as emu:
        for stored in (0, args.jobs):
            if stored:
                fill(emu.url, stored, "t-")
            figures, _ = run_rounds(emu.url, args.requests, args.rounds, f"t{stored}-")
            show(f"in-thread, {stored} Jobs stored", figures, baseline, None)
    with emulator_process() as proc:
        for stored in (0, args.jobs):
            if stored:
                fill(proc.url, stored, "p-")
            figures, cpu = run_rounds(proc.url, args.requests, args.rounds, f"p{stored}-",
                                      pid=proc.pid)
            show(f"own process, {stored} Jobs stored", figures, baseline, cpu)


if __name__ == "__main__":
    main()
