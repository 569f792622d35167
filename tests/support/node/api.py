"""The API as the node sees it: its own client certificate, the pod watch's 410."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping

import httpx

from tests.support.controlplane import ControlPlane
from tests.support.node.constants import WATCH_SECONDS, Obj


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:500]}")
        self.status = status
        try:
            self.message = str(json.loads(body).get("message", body))
        except ValueError:
            self.message = body


class Api:
    """JSON over HTTPS to the API server with the node's client certificate."""

    def __init__(self, cp: ControlPlane, user: str) -> None:
        self._ssl = cp.ssl_context(user)
        self._client = httpx.Client(base_url=cp.server, verify=self._ssl,
                                    timeout=httpx.Timeout(10.0))

    def request(self, method: str, path: str, body: Obj | None = None,
                params: Mapping[str, str] | None = None,
                content_type: str = "application/json") -> Obj:
        response = self._client.request(
            method, path, params=params, headers={"Content-Type": content_type},
            content=None if body is None else json.dumps(body))
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text)
        return dict(response.json())

    def get(self, path: str, **params: str) -> Obj:
        return self.request("GET", path, params=params)

    @contextlib.contextmanager
    def watch(self, path: str, params: Mapping[str, str]) -> Iterator[httpx.Response]:
        timeout = httpx.Timeout(10.0, read=WATCH_SECONDS + 30)
        with httpx.Client(base_url=self._client.base_url, verify=self._ssl,
                          timeout=timeout) as client, \
                client.stream("GET", path, params={**params, "watch": "true"}) as response:
            if response.status_code >= 400:
                raise ApiError(response.status_code, response.read().decode())
            yield response

    def close(self) -> None:
        self._client.close()


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


