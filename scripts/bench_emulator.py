"""Throughput of the Kubernetes API emulator through the official client, one thread.

Measures Job creates/s and gets/s with 0 and with 5,000 stored Jobs, for the emulator in a
background thread of the client's process (how most tests run it) and in its own process
(how dispatcher tests run it), plus `raw` gets that skip the client's model
deserialization. A canned-response server on the same HTTP stack, measured in the same run,
is the baseline: it is what the client costs when the server does no work at all.

    .venv/bin/python scripts/bench_emulator.py [--jobs 5000] [--requests 2000]

Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kubernetes.client

from tests.k8s_emulator import api_client, emulator_process, running_emulator
from tests.k8s_emulator.httpserver import HttpServer, Response

NAMESPACE = "bench"


def job(name: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "runner", "image": "runner:1",
                                "env": [{"name": "SERVER_HANDLE", "value": name}]}]}}}}


def rate(n: int, fn: Callable[[int], object], warm_from: int = 0) -> float:
    for i in range(warm_from, warm_from + min(50, n)):  # warm the pool and caches
        fn(i)
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, label: str, n: int, fill: int, server_pid: int | None) -> None:
    client = api_client(url)
    batch = kubernetes.client.BatchV1Api(client)
    prefix = f"{label.replace(' ', '-')}-"
    rows = []
    for stored in (0, fill):
        existing = len(batch.list_namespaced_job(NAMESPACE, _preload_content=False).data)
        if stored:
            for i in range(stored):
                batch.create_namespaced_job(NAMESPACE, job(f"{prefix}fill-{i}"),
                                            _preload_content=False)
        tag = f"{prefix}{stored}-"
        cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
        creates = rate(n, lambda i, tag=tag: batch.create_namespaced_job(
            NAMESPACE, job(f"{tag}{i}")), warm_from=n)
        cpu1 = cpu_seconds(server_pid) if server_pid else 0.0
        gets = rate(n, lambda i, tag=tag: batch.read_namespaced_job(f"{tag}{i}", NAMESPACE))
        cpu2 = cpu_seconds(server_pid) if server_pid else 0.0
        raw = rate(n, lambda i, tag=tag: batch.read_namespaced_job(
            f"{tag}{i}", NAMESPACE, _preload_content=False).data)
        cpu3 = cpu_seconds(server_pid) if server_pid else 0.0
        rows.append((stored, creates, gets, raw, existing,
                     (cpu1 - cpu0, cpu2 - cpu1, cpu3 - cpu2)))
    for stored, creates, gets, raw, _, cpu in rows:
        line = (f"{label:<18} stored={stored:>5}  creates/s={creates:7.0f}  gets/s={gets:7.0f}"
                f"  raw gets/s={raw:7.0f}")
        if server_pid:
            per = [c / (n + 50) * 1e6 for c in cpu]
            line += f"  server CPU us/req create={per[0]:.0f} get={per[1]:.0f}"
        print(line, flush=True)
    client.close()


def canned_baseline(n: int) -> None:
    """The client against a server that answers every request with one stored Job."""
    with running_emulator() as emu:
        client = emu.api_client()
        body = kubernetes.client.BatchV1Api(client).create_namespaced_job(
            NAMESPACE, job("canned"), _preload_content=False).data
        client.close()
    ready = threading.Event()
    holder: dict = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        server = HttpServer(lambda req, conn: Response(201 if req.method == "POST" else 200,
                                                       body))
        loop.run_until_complete(server.listen())
        holder.update(loop=loop, port=server.port)
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait()
    client = api_client(f"http://127.0.0.1:{holder['port']}")
    batch = kubernetes.client.BatchV1Api(client)
    creates = rate(n, lambda i: batch.create_namespaced_job(NAMESPACE, job(f"c{i}")), n)
    gets = rate(n, lambda i: batch.read_namespaced_job("canned", NAMESPACE))
    raw = rate(n, lambda i: batch.read_namespaced_job("canned", NAMESPACE,
                                                      _preload_content=False).data)
    print(f"{'baseline (canned)':<18} stored=    -  creates/s={creates:7.0f}  gets/s={gets:7.0f}"
          f"  raw gets/s={raw:7.0f}", flush=True)
    holder["loop"].call_soon_threadsafe(holder["loop"].stop)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="stored Jobs for the full run")
    parser.add_argument("--requests", type=int, default=2000, help="requests per figure")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, kubernetes client "
          f"{kubernetes.__version__}, {os.cpu_count()} CPUs", flush=True)
    canned_baseline(args.requests)
    with running_emulator() as emu:
        measure(emu.url, "in-thread", args.requests, args.jobs, None)
    with emulator_process() as proc:
        measure(proc.url, "own process", args.requests, args.jobs, proc.pid)


if __name__ == "__main__":
    main()
