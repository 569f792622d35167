"""The local executor hands the runner the same deadline instant a Job's pod gets through
the downward API (JOB_DEADLINE_AT), counted from the launch."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contracts.messages import ProvisionerMessage
from dispatcher.executors.local import LocalExecutor
from dispatcher.jobspec import ENV_DEADLINE_AT
from dispatcher.settings import DispatcherSettings, ExecutorKind, JobTemplateSettings

pytestmark = pytest.mark.unit

SHOW_ENV = ("import os, sys; open(sys.argv[1], 'w').write("
            "os.environ.get('JOB_DEADLINE_AT', '') + ' ' + "
            "os.environ.get('JOB_ACTIVE_DEADLINE_SECONDS', ''))")


async def test_the_local_runner_gets_job_deadline_at(tmp_path: Path) -> None:
    seen = tmp_path / "env"
    settings = DispatcherSettings(executor=ExecutorKind.LOCAL,
                                  local_command=[sys.executable, "-c", SHOW_ENV, str(seen)])
    executor = LocalExecutor(settings, JobTemplateSettings(active_deadline_seconds=900))
    before = datetime.now(UTC).replace(microsecond=0)
    assert await executor.launch(ProvisionerMessage(server_handle="srv-local").with_identity(),
                                 "job-local-1")
    end = await asyncio.wait_for(executor.ends.get(), 30)
    assert end.succeeded, end
    at_text, seconds = seen.read_text().split()
    assert seconds == "900" and at_text.endswith("Z"), at_text
    at = datetime.fromisoformat(at_text)
    assert before + timedelta(seconds=900) <= at <= datetime.now(UTC) + timedelta(seconds=900)
    assert ENV_DEADLINE_AT == "JOB_DEADLINE_AT"
