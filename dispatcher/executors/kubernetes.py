"""Runs each message as a Kubernetes Job and watches Jobs and their Pods to the end.

The adapter between the dispatcher and the Kubernetes client: it creates Jobs, starts the
watches, feeds what they deliver to the bookkeeping (executors/tracking.py, no I/O) and acts
on what that returns (queues the ends, logs, counts, holds launches)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from contracts.messages import ProvisionerMessage
from dispatcher.executors.base import (
    POD_REFUSAL_PREFIX,
    JobEnd,
    JobView,
    LaunchRejected,
    TransientLaunchError,
)
from dispatcher.executors.tracking import (
    JOB_FIELDS,
    NOTHING,
    POD_FIELDS,
    JobTracker,
    Outcome,
)
from dispatcher.jobspec import JobBodyTemplate, JobFields, build_job
from dispatcher.kube.classify import FAILED_CREATE, admission_rejection, is_rbac_denial
from dispatcher.kube.client import KubeClient
from dispatcher.kube.creating import JobPayload, create_job, dry_run_pod
from dispatcher.kube.errors import UNAUTHORIZED, JobCreateFailed, KubeCallFailed
from dispatcher.kube.kinds import WatchKind
from dispatcher.kube.mailbox import Mailbox
from dispatcher.kube.stopping import EventAction, record_failure, stop_job
from dispatcher.kube.watching import Change, ListWatch, Sync
from dispatcher.naming import selector
from dispatcher.observability.metrics import Metrics
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from dispatcher.supervision import Loop, Supervisor

log = logging.getLogger(__name__)
# The Job controller's Events saying it could not create a pod (see tracking._apply_event).
FAILED_CREATE_SELECTOR = f"involvedObject.kind=Job,reason={FAILED_CREATE}"
EVENTS_LOOP, STUCK_LOOP = Loop.KUBE_EVENTS, Loop.KUBE_STUCK
LOOPS = (EVENTS_LOOP, STUCK_LOOP)


class KubernetesExecutor:
    def __init__(self, kube: KubeClient, settings: DispatcherSettings,
                 template: JobTemplateSettings, metrics: Metrics,
                 supervisor: Supervisor | None = None, check_interval: float = 1.0) -> None:
        self.kube = kube
        self.metrics = metrics
        # The event and stuck-pod loops run under the dispatcher's supervisor (logged,
        # restarted with backoff, counted; not ready while down, not alive while they keep
        # dying); one of their own when the executor is used alone. Their state lives in
        # the tracker, and the next listing repairs anything a crash skipped.
        self.supervisor = supervisor or Supervisor(metrics)
        self.settings = settings
        self.template = template
        self._body = JobBodyTemplate(settings, template)
        self.namespace = settings.namespace
        self.check_interval = check_interval
        self.tracker = JobTracker(settings.image_pull_grace_seconds,
                                  settings.pending_timeout_seconds, check_interval)
        self.ends: asyncio.Queue[JobEnd] = asyncio.Queue()
        # Delivered but not yet applied: a consumer that crashes on one item leaves the
        # items after it here for its restart.
        self._backlog: deque[Sync | Change] = deque()
        self._watch_ok = {WatchKind.JOBS: False, WatchKind.PODS: False}
        self._watches: list[ListWatch] = []
        self._first_sync = asyncio.Event()
        # Jobs whose create got no answer: a later 409 may be our own create (metrics).
        self._unanswered: set[str] = set()
        self.on_pod_rejected: Callable[[str], None] | None = None
        self._events_ok = False
        self._pod_check_denied = False  # RBAC refuses the pod dry run: logged once

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        mailbox = Mailbox[Sync | Change](loop)  # what the watch threads deliver
        deliver = mailbox.put
        sel = selector(self.settings.instance)
        for kind, fn, fields in (
                (WatchKind.JOBS, self.kube.batch.list_namespaced_job, JOB_FIELDS),
                (WatchKind.PODS, self.kube.core.list_namespaced_pod, POD_FIELDS)):
            watch = ListWatch(kind, fn, self.namespace, sel, deliver,
                              on_health=self._health_setter(loop, kind),
                              on_unauthorized=self.kube.reload_credentials, fields=fields)
            self._watches.append(watch)
            watch.start()
        # Not part of readiness: without it a pod refused at admission is still reported
        # as PodNotCreated after DISPATCHER_PENDING_TIMEOUT_SECONDS.
        events = ListWatch(WatchKind.EVENTS, self.kube.core.list_namespaced_event,
                           self.namespace, "", deliver, on_health=self._events_health(loop),
                           on_unauthorized=self.kube.reload_credentials,
                           field_selector=FAILED_CREATE_SELECTOR)
        self._watches.append(events)
        events.start()
        self.supervisor.start(EVENTS_LOOP, functools.partial(self._consume, mailbox))
        self.supervisor.start(STUCK_LOOP, self._check_stuck)
        await self._first_sync.wait()

    def _health_setter(self, loop: asyncio.AbstractEventLoop, kind: WatchKind
                       ) -> Callable[[bool], None]:
        def set_health(ok: bool) -> None:
            loop.call_soon_threadsafe(self._watch_ok.__setitem__, kind, ok)
        return set_health

    def _events_health(self, loop: asyncio.AbstractEventLoop) -> Callable[[bool], None]:
        def set_health(ok: bool) -> None:
            loop.call_soon_threadsafe(setattr, self, "_events_ok", ok)
        return set_health

    async def stop(self) -> None:
        for watch in self._watches:
            watch.stop()
        for loop in LOOPS:
            await self.supervisor.stop(loop)
        self.kube.close()

    @property
    def healthy(self) -> bool:
        return all(self._watch_ok.values()) and all(map(self.supervisor.is_up, LOOPS))

    # -- verbs -------------------------------------------------------------------------
    async def launch(self, message: ProvisionerMessage, job_name: str) -> bool:
        fields = JobFields.of(message, job_name)
        body = JobPayload(job_name, fields.request_id, self._body.render(fields))
        try:
            created = await create_job(self.kube, self.namespace, body,
                                       after_lost_reply=job_name in self._unanswered)
        except JobCreateFailed as exc:
            if not exc.failure.retryable:
                self._unanswered.discard(job_name)
                raise LaunchRejected(str(exc)) from None
            if exc.maybe_applied:
                self._unanswered.add(job_name)
            raise TransientLaunchError(str(exc), exc.failure.retry_after,
                                       maybe_applied=exc.maybe_applied) from None
        self._unanswered.discard(job_name)
        return created

    async def preflight(self) -> str | None:
        """A Job built from the settings, created with ``dryRun=All``: validated and
        admitted by the API server like a real one, never stored."""
        sample = ProvisionerMessage(server_handle="preflight",
                                    request_id=f"preflight-{self.settings.replica_id}"[:63]
                                    ).with_identity()
        body = build_job(sample, self.settings, self.template)
        try:
            await create_job(self.kube, self.namespace, body, dry_run=True)
        except JobCreateFailed as exc:
            if exc.failure.retryable:
                raise TransientLaunchError(str(exc), exc.failure.retry_after) from None
            return str(exc)
        return await self._pod_preflight(body)

    async def _pod_preflight(self, job: dict[str, Any]) -> str | None:
        """The pod the Job controller would create, with ``dryRun=All``: PodSecurity,
        ResourceQuota and policy webhooks judge pods, not Jobs, so only this tells whether
        the Job's pod will be admitted."""
        try:
            await dry_run_pod(self.kube, self.namespace, job)
        except KubeCallFailed as exc:
            failure = exc.failure
            rejection = admission_rejection(failure.message)
            if rejection is not None:
                return f"{POD_REFUSAL_PREFIX} ({rejection.cause}): {rejection.message}; " \
                       f"{rejection.advice}"
            if failure.status == 403 and is_rbac_denial(failure.message):
                if not self._pod_check_denied:
                    log.warning("cannot check runner pods ahead (RBAC: grant create on pods, "
                                "as the chart's Role does); a pod refused at admission is "
                                "still reported from the Job controller's Events",
                                extra={"error": failure.message[:500]})
                self._pod_check_denied = True
                return None
            if failure.retryable or failure.status == UNAUTHORIZED:
                raise TransientLaunchError(str(exc), failure.retry_after) from None
            return f"{POD_REFUSAL_PREFIX}: {failure.message}"
        self._pod_check_denied = False
        return None

    async def stop_job(self, job_name: str, reason: str, message: str) -> None:
        await stop_job(self.kube, self.namespace, job_name, reason, message)

    async def record_failure(self, end: JobEnd) -> None:
        job = self.tracker.job(end.job_name) or {"metadata": {"name": end.job_name}}
        await record_failure(self.kube, self.namespace, job, end.reason, end.message,
                             self.settings.replica_id,
                             EventAction.STOP_JOB if end.stop_job
                             else EventAction.REPORT_FAILURE)

    def snapshot(self) -> dict[str, JobView] | None:
        return self.tracker.snapshot()

    # -- watching ----------------------------------------------------------------------
    async def _consume(self, mailbox: Mailbox[Sync | Change]) -> None:
        """What the watch threads deliver, in order, through the tracker."""
        backlog = self._backlog
        while True:
            if not backlog:
                backlog.extend(await mailbox.take())
            while backlog:
                self._apply(backlog.popleft())

    def _apply(self, item: Sync | Change) -> None:
        outcome = self.tracker.apply(item)
        if outcome is not NOTHING:
            self._act(outcome)
        if isinstance(item, Sync):
            if item.kind in self._watch_ok:
                self._watch_ok[WatchKind(item.kind)] = True
            if self.tracker.synced:
                self._first_sync.set()

    async def _check_stuck(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            self._act(self.tracker.tick())

    def _act(self, outcome: Outcome) -> None:
        for job_name, text in outcome.disruptions:
            log.warning("runner pod disrupted; the Job controller replaces it",
                        extra={"job_name": job_name, "detail": text})
        for refusal in outcome.refusals:
            rejection = refusal.rejection
            self.metrics.pod_admission_rejections.labels(rejection.cause).inc()
            log.error("runner pod refused at admission: the message fails now, the Job is "
                      "stopped and launches are held while the runner pod is refused",
                      extra={"job_name": refusal.job_name,
                             "server_handle": refusal.server_handle,
                             "request_id": refusal.request_id, "cause": rejection.cause,
                             "error": rejection.message[:1000], "advice": rejection.advice})
            if self.on_pod_rejected is not None:
                self.on_pod_rejected(f"{POD_REFUSAL_PREFIX} ({rejection.cause}): "
                                     f"{rejection.message}")
        for end in outcome.ends:
            self.ends.put_nowait(end)
