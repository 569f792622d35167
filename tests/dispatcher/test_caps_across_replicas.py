"""Caps per action with three dispatcher replicas on the real API server and Job controller,
one of them restarted mid-stream (as a rolling update does): at most two reinstall Jobs run
at once, they start in push order, setups pushed among them do not wait for them, a
server's setup pushed after its reinstall runs after it, and a message is claimed about once
(claims received over messages < 1.1). The test is the kubelet of the status node: setups
complete as soon as they appear, reinstalls after a hold, so the cap is what limits them.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.keys import Keys
from contracts.reporting import publish_result
from contracts.results import Reporter, ResultEntry, ResultStatus
from dispatcher.naming import LABEL_ACTION, LABEL_HANDLE, LABEL_REQUEST
from tests.support.dispatch import DispatcherProcess, message, metric_value
from tests.support.kube_env import KubeEnv
from tests.support.services import RedisServer

# A follow-up is claimed twice by design (parked behind its server, then handed the slot), as
# without caps; few of them, so the ratio measures what the caps cost.
REINSTALLS, SETUPS, FOLLOW_UPS = 16, 40, 2
CAP, IN_FLIGHT = 2, 6
HOLD = 0.8  # how long a reinstall Job runs before the test completes it


async def complete(kube: KubeEnv, redis: aioredis.Redis, keys: Keys,
                   job: dict[str, Any]) -> None:
    labels = job["metadata"]["labels"]
    entry = ResultEntry(request_id=labels[LABEL_REQUEST], server_handle=labels[LABEL_HANDLE],
                        status=ResultStatus.SUCCEEDED, reported_by=Reporter.RUNNER,
                        finished_at=datetime.now(UTC))
    assert await publish_result(redis, keys, entry)
    await asyncio.to_thread(kube.kubelet.succeed, kube.namespace, job["metadata"]["name"])


def claims(log: Path) -> int:
    """Payloads handed to one dispatcher process, from its DEBUG lines (a process that was
    stopped has no /metrics any more; its log stays)."""
    events = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return sum(int(e.get("count", 0)) for e in events if e["event"] == "claimed")


@pytest.mark.timeout(420)
async def test_three_replicas_hold_the_reinstall_cap_in_push_order(
        kube_env: KubeEnv, redis_srv: RedisServer, redis_client: aioredis.Redis, keys: Keys,
        tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
           **kube_env.dispatcher_env(), "DISPATCHER_HEARTBEAT_SECONDS": "0.5",
           "DISPATCHER_LOG_LEVEL": "DEBUG", "DISPATCHER_MAX_IN_FLIGHT": str(IN_FLIGHT),
           "DISPATCHER_ACTION_CAPS": f'{{"reinstall": {CAP}}}'}
    processes = [DispatcherProcess(env, tmp_path / f"dispatcher-{i}.log", replica=f"r{i}")
                 .start() for i in range(3)]
    try:
        for process in processes:
            await asyncio.to_thread(process.wait_ready, 60)
        # Reinstalls and setups interleaved, as a Scheduler sends a wave of reinstalls among
        # its usual work; a few reinstalled servers get a setup right after.
        payloads = []
        for i in range(max(REINSTALLS, SETUPS)):
            if i < REINSTALLS:
                payloads.append(message(f"rs-{i}", f"rs-{i}-0", force_reinstall=True))
            if i < SETUPS:
                payloads.append(message(f"st-{i}", f"st-{i}-0"))
            if i < FOLLOW_UPS:
                payloads.append(message(f"rs-{i}", f"rs-{i}-1"))
        for payload in payloads:
            await redis_client.lpush(keys.queue, payload)

        seen: dict[str, float] = {}  # request id -> when its Job was first seen
        ended: dict[str, float] = {}
        reinstalls_ended_before: dict[int, int] = {}  # reinstall index -> ended when it began
        setups_before_third_reinstall = -1
        peak = 0
        restarted = False
        deadline = time.monotonic() + 300
        while len(ended) < len(payloads):
            assert time.monotonic() < deadline, f"{len(ended)}/{len(payloads)} runs ended"
            jobs = await asyncio.to_thread(kube_env.jobs)
            now = time.monotonic()
            for job in jobs:
                rid = job["metadata"]["labels"][LABEL_REQUEST]
                if rid in seen:
                    continue
                seen[rid] = now
                if job["metadata"]["labels"][LABEL_ACTION] == "reinstall":
                    index = int(rid.split("-")[1])
                    reinstalls_ended_before[index] = sum(
                        1 for r in ended if r.startswith("rs-") and r.endswith("-0"))
                    if index == 2:
                        setups_before_third_reinstall = sum(1 for r in seen
                                                            if r.startswith("st-"))
            running = [j for j in jobs if j["metadata"]["labels"][LABEL_REQUEST] not in ended]
            peak = max(peak, sum(1 for j in running
                                 if j["metadata"]["labels"][LABEL_ACTION] == "reinstall"))
            for job in running:
                rid = job["metadata"]["labels"][LABEL_REQUEST]
                reinstall = job["metadata"]["labels"][LABEL_ACTION] == "reinstall"
                if not reinstall or now - seen[rid] >= HOLD:
                    await complete(kube_env, redis_client, keys, job)
                    ended[rid] = time.monotonic()
            if not restarted and len(ended) >= len(payloads) // 3:
                # A rolling update of one replica: SIGTERM, then a new process, same name.
                assert await asyncio.to_thread(processes[1].terminate) == 0
                processes[1] = DispatcherProcess(env, tmp_path / "dispatcher-1b.log",
                                                 replica="r1").start()
                restarted = True
            await asyncio.sleep(0.05)

        print(f"\nreinstall Jobs at once: peak {peak}; reinstalls ended when each began: "
              f"{reinstalls_ended_before}; setups begun before the third reinstall: "
              f"{setups_before_third_reinstall}")
        assert peak <= CAP
        # Push order: reinstall i begins only after all but one of the earlier ones ended
        # (the cap is 2 and the capped ones go oldest first).
        late = {i: n for i, n in reinstalls_ended_before.items() if n < i - 1}
        assert late == {}, late
        # The setups pushed right after the first capped reinstall (rs-2) did not queue
        # behind it: they began no later than it did, while it waited for a reinstall's end.
        assert seen["st-2-0"] <= seen["rs-2-0"] and seen["st-3-0"] <= seen["rs-2-0"], seen
        # A server's setup pushed after its reinstall ran after it.
        for i in range(FOLLOW_UPS):
            assert seen[f"rs-{i}-1"] >= ended[f"rs-{i}-0"], i

        claimed = await asyncio.to_thread(
            lambda: sum(claims(log) for log in tmp_path.glob("dispatcher-*.log")))
        # The log lines and the counter agree where both exist.
        for process in processes:
            assert claims(process.log_path) == metric_value(
                process.metrics(), "infra_service_messages_received_total")
        ratio = claimed / len(payloads)
        print(f"claims received {claimed} for {len(payloads)} messages: {ratio:.3f} per message")
        assert ratio < 1.1
    finally:
        for process in processes:
            process.kill()
