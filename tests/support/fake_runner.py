"""A stand-in for the runner in dispatcher tests: records what it was given, optionally
sleeps, and reports like the real runner does (or, on request, does not).

Behaviour per server handle comes from FAKE_RUNNER_PLAN, a JSON object
{handle: "ok" | "silent-fail" | "silent-ok" | "sleep:<seconds>"}; default "ok".
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from contracts.connections import RedisSettings, create_redis
from contracts.messages import parse_message
from contracts.reporting import publish_result
from contracts.results import Reporter, ResultEntry, ResultStatus


def record(event: str, handle: str, rid: str) -> None:
    path = os.environ.get("FAKE_RUNNER_LOG")
    if path:
        with Path(path).open("a") as log:
            log.write(json.dumps({"event": event, "handle": handle, "rid": rid,
                                  "t": time.time(), "job": os.environ.get("JOB_NAME")}) + "\n")


async def main() -> int:
    message = parse_message(os.environ["PROVISIONER_MESSAGE"])
    plan = json.loads(os.environ.get("FAKE_RUNNER_PLAN", "{}")).get(message.server_handle, "ok")
    rid = message.request_id or ""
    started = datetime.now(UTC)
    record("start", message.server_handle, rid)
    if plan.startswith("sleep:"):
        await asyncio.sleep(float(plan.split(":", 1)[1]))
    record("end", message.server_handle, rid)
    if plan == "silent-fail":
        return 7
    if plan == "silent-ok":
        return 0
    settings = RedisSettings()
    redis = create_redis(settings)
    entry = ResultEntry(request_id=rid, server_handle=message.server_handle,
                        action=message.action, status=ResultStatus.SUCCEEDED,
                        reported_by=Reporter.RUNNER, job_name=os.environ.get("JOB_NAME"),
                        started_at=started, finished_at=datetime.now(UTC))
    await publish_result(redis, settings.keys, entry)
    await redis.aclose()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
