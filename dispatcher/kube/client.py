"""Configured Kubernetes API access with per-call timeouts and response metrics.

Job creates, the hot path, are POSTed on the event loop's own connections (poster.py).
Every other call goes through the official client, which is synchronous: each runs in a
small thread pool so the event loop keeps popping while requests are in flight.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import urllib3.exceptions
from kubernetes import client, config
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException

from dispatcher.kube.poster import AsyncPoster, PostResponse
from dispatcher.observability.metrics import Metrics

T = TypeVar("T")


def load_configuration(kubeconfig: str | None, pool_size: int) -> client.Configuration:
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return configuration


def _read_and_release(call: Callable[[], T]) -> T:
    response = call()
    _ = response.data  # type: ignore[attr-defined]
    response.release_conn()  # type: ignore[attr-defined]
    return response


class KubeClient:
    def __init__(self, configuration: client.Configuration, metrics: Metrics,
                 timeout_seconds: float, workers: int, kubeconfig: str | None = None) -> None:
        self.configuration = configuration
        self.kubeconfig = kubeconfig
        self._reload_lock = threading.Lock()
        self._reloaded_at = 0.0
        self.api_client = client.ApiClient(configuration)
        self.batch = client.BatchV1Api(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.events = client.EventsV1Api(self.api_client)
        self.metrics = metrics
        self.timeout = (min(timeout_seconds, 5.0), timeout_seconds)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        # Creates go over the event loop's own connections, unless a proxy is configured
        # (then through the client's pool in a thread, which speaks to proxies).
        self._poster = None if configuration.proxy else AsyncPoster(
            configuration, self._auth_headers, self.api_client.user_agent, max_idle=workers)

    def _auth_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        self.api_client.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    async def post(self, verb: str, path: str, payload: bytes, query: str = "",
                   ) -> PostResponse | rest.RESTResponse:
        """POST an already serialised JSON body (see post_json), counting the response
        code by verb like ``call``."""
        if self._poster is None:
            return await self.call(verb, self.post_json, path, payload, query)
        try:
            result = await self._poster.post(path, payload, query, self.timeout)
        except ApiException as exc:
            self.metrics.api_responses.labels(verb, str(exc.status or 0)).inc()
            raise
        except OSError:
            self.metrics.api_responses.labels(verb, "0").inc()
            raise
        self.metrics.api_responses.labels(verb, str(result.status)).inc()
        return result

    async def call(self, verb: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one API call off the loop, counting its response code by verb.

        With ``_preload_content=False`` the body is read and the connection handed back to
        the pool in the worker thread (an unread response would cost a new TCP connection
        per request); the raw bytes are then in ``result.data``.
        """
        kwargs.setdefault("_request_timeout", self.timeout)
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        if kwargs.get("_preload_content") is False:
            call = functools.partial(_read_and_release, call)
        try:
            result = await loop.run_in_executor(self._pool, call)
        except ApiException as exc:
            self.metrics.api_responses.labels(verb, str(exc.status or 0)).inc()
            raise
        except (urllib3.exceptions.HTTPError, OSError):
            self.metrics.api_responses.labels(verb, "0").inc()
            raise
        status = getattr(result, "status", 200)
        self.metrics.api_responses.labels(verb, str(status)).inc()
        return result

    def post_json(self, path: str, payload: bytes, query: str = "",
                  _request_timeout: tuple[float, float] | None = None) -> rest.RESTResponse:
        """POST an already serialised JSON body through the client's own connection pool,
        TLS settings and credentials (the same Authorization header the generated API
        methods send). Job creation uses it: the generated method walks the body again to
        sanitise it, serialises it and validates parameters, which costs more CPU per Job
        than the rest of the dispatch. Non-2xx raises ApiException, as the client does."""
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": self.api_client.user_agent}
        self.api_client.update_params_for_auth(headers, [], ["BearerToken"])
        url = f"{self.configuration.host}{path}" + (f"?{query}" if query else "")
        connect, read = _request_timeout or self.timeout
        response = self.api_client.rest_client.pool_manager.request(
            "POST", url, body=payload, headers=headers, preload_content=False,
            timeout=urllib3.Timeout(connect=connect, read=read))
        try:
            wrapped = rest.RESTResponse(response)  # reads the whole body
        finally:
            response.release_conn()
        if not 200 <= wrapped.status <= 299:
            raise ApiException(http_resp=wrapped)
        return wrapped

    def reload_credentials(self) -> bool:
        """After a 401: read the credentials again (kubeconfig, or the in-cluster token
        file, which the kubelet rotates) into the live configuration, which every request
        and watch reads its Authorization header from. At most once a second; True if
        reloaded now. Never logs the credentials themselves."""
        with self._reload_lock:
            if time.monotonic() - self._reloaded_at < 1.0:
                return False
            self._reloaded_at = time.monotonic()
            fresh = load_configuration(self.kubeconfig, self.configuration.connection_pool_maxsize)
            for attr in ("api_key", "api_key_prefix", "refresh_api_key_hook", "username",
                         "password"):
                setattr(self.configuration, attr, getattr(fresh, attr))
            return True

    def close(self) -> None:
        if self._poster is not None:
            self._poster.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()
