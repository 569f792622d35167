"""The dispatcher: wiring of its collaborators and their lifecycle.

- intake.py claims messages in batches, parses and routes them;
- launcher.py creates each routed message's Job; acks.py acks it (batched);
- ends.py reports Jobs that ended without their runner's result and frees their slot;
- reconciler.py repairs what no event will (start-up, dead replicas, orphans);
- preflight.py keeps intake closed while the API refuses Jobs built from the settings.
They share the queue store (store/queue.py), the Redis retry policy (store/retry.py) and the
set of payloads this process handles (dispatch_state.py).

Everything survives SIGKILL at any instant: state lives in Redis (see queue.py) and in
Kubernetes, and every step is idempotent on redelivery (deterministic Job names,
exactly-once result publishing, compare-and-release of server slots).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from contracts.keys import Keys
from dispatcher.acks import Acks
from dispatcher.dispatch_state import DispatchState
from dispatcher.ends import Ends
from dispatcher.executors.base import Executor
from dispatcher.history.store import History
from dispatcher.intake import Intake
from dispatcher.launcher import Launcher
from dispatcher.observability.metrics import Metrics
from dispatcher.preflight import JobConfigCheck
from dispatcher.reconciler import Reconciler
from dispatcher.rejects import Rejecter
from dispatcher.settings import DispatcherSettings
from dispatcher.store.queue import QueueStore
from dispatcher.store.retry import RedisRetry
from dispatcher.supervision import Loop, Supervisor

log = logging.getLogger("dispatcher")

BLOCK_SECONDS = 5.0  # the idle wait on an empty queue (the blocking client's timeout > it)
CLAIM_BATCH_FACTOR = 8  # routed messages waiting for a create, per concurrent create


class Dispatcher:
    def __init__(self, settings: DispatcherSettings, keys: Keys, redis: aioredis.Redis,
                 blocking_redis: aioredis.Redis, executor: Executor, metrics: Metrics,
                 supervisor: Supervisor, history: History | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.executor = executor
        self.started = False
        self.supervisor = supervisor
        self.store = QueueStore(redis, keys, settings.replica_id)
        self.retry = RedisRetry(metrics)
        state = DispatchState()
        self.config = JobConfigCheck(executor, settings.preflight_seconds)
        rejecter = Rejecter(self.store, self.retry, metrics, settings.replica_id)
        self.acks = Acks(self.store, self.retry)
        self.launcher = Launcher(
            executor, self.acks, rejecter, self.config, state, metrics,
            concurrency=settings.dispatch_concurrency,
            room=settings.dispatch_concurrency * CLAIM_BATCH_FACTOR,
            retry_max_seconds=settings.api_retry_max_seconds, history=history)
        self.intake = Intake(self.store, self.retry, blocking_redis, self.launcher, rejecter,
                             self.config, state, metrics,
                             max_in_flight=settings.max_in_flight, block_seconds=BLOCK_SECONDS,
                             action_caps=settings.action_caps)
        self.ends = Ends(executor, self.store, self.retry, redis, keys, state, metrics,
                         history)
        self.reconciler = Reconciler(executor, self.store, self.retry, self.ends, state,
                                     settings)

    # -- what /healthz and /readyz report --------------------------------------------------
    @property
    def alive(self) -> bool:
        """False only when a loop keeps dying (restarts do not heal it): /healthz."""
        return self.supervisor.healthy

    @property
    def loops_up(self) -> bool:
        """False while any loop is down (between a crash and its restart): /readyz."""
        return self.supervisor.all_up

    @property
    def redis_ok(self) -> bool:
        return self.retry.ok

    @property
    def launch_failing(self) -> bool:
        return self.launcher.failing

    @property
    def config_refusal(self) -> str | None:
        return self.config.refusal

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down within the configured bound."""
        await self.retry.until_reachable(self.redis, stop)
        if stop.is_set():
            return
        requeued = await self.reconciler.start_up()
        log.info("dispatcher starting", extra={"replica": self.settings.replica_id,
                                               "requeued_own": requeued,
                                               "executor": self.settings.executor.value})
        self.supervisor.start(Loop.HEARTBEAT, self.reconciler.heartbeat_loop)
        starting = asyncio.create_task(self.executor.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await self._shutdown()
            return
        stopped.cancel()
        starting.result()
        await self.config.check()
        self.supervisor.start(Loop.PREFLIGHT, self.config.loop)
        self.supervisor.start(Loop.ENDS, self.ends.loop)
        self.supervisor.start(Loop.ACKS, self.acks.loop)
        self.supervisor.start(Loop.RECONCILE, self.reconciler.loop)
        self.supervisor.start(Loop.POP, lambda: self.intake.loop(stop))
        self.started = True
        log.info("dispatcher ready", extra={"replica": self.settings.replica_id})
        await stop.wait()
        await self._shutdown()

    async def _shutdown(self) -> None:
        log.info("shutting down: no more pops", extra={"in_progress": len(self.launcher.tasks)})
        self.started = False
        await self.supervisor.stop("pop")
        # Creates in progress finish (bounded); their acks still run meanwhile.
        await self.launcher.drain(self.settings.shutdown_timeout_seconds)
        await self.supervisor.stop_all()
        await self.launcher.wait_cancelled()
        try:
            await self.store.leave()  # what is still claimed goes back to the queue
        except RedisError as exc:
            log.error("could not requeue claimed messages on shutdown; they are requeued "
                      "when this replica restarts or its heartbeat expires",
                      extra={"error": str(exc)})
        await self.executor.stop()
        log.info("dispatcher stopped")
