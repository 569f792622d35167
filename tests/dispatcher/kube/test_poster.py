"""The event-loop POST path of Job creates, over real sockets: against the real API server over
TLS (authenticated by a bearer token or a client certificate, as the kubeconfig says), and
against small servers that answer in chunks, close idle connections, hang, or speak TLS."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

import dispatcher.kube.poster as poster_module
from dispatcher.kube.errors import describe
from dispatcher.kube.poster import AsyncPoster
from tests.support.kube_env import KubeEnv

LIMITS = (5.0, 5.0)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


def poster_for(configuration: client.Configuration) -> AsyncPoster:
    api_client = client.ApiClient(configuration)

    def auth() -> dict[str, str]:
        headers: dict[str, str] = {}
        api_client.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    return AsyncPoster(configuration, auth, "infra-test", max_idle=4)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head + await reader.readexactly(length)


async def serve(handler: Handler, tls: ssl.SSLContext | None = None
                ) -> tuple[asyncio.Server, int, list[bytes], list[int]]:
    """A server recording each request and the number of connections it accepted."""
    seen: list[bytes] = []
    accepted = [0]

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            await handler(reader, writer, seen)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1], seen, accepted


def chunked(body: bytes, headers: str = "") -> bytes:
    parts = [body[i:i + 7] for i in range(0, len(body), 7)]
    encoded = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
    return (f"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n{headers}\r\n").encode() \
        + encoded + b"0\r\nX-Trailer: t\r\n\r\n"


@pytest.mark.parametrize("credentials", ["bearer token", "client certificate"])
async def test_creates_against_the_real_api_server_201_then_409_as_api_exception(
        kube_env: KubeEnv, credentials: str, tmp_path: Path) -> None:
    """The bearer token: the dispatcher's ServiceAccount, through the fault proxy's TLS (a
    certificate of the cluster's CA). The client certificate: the admin's kubeconfig, straight
    to the API server, which authenticates the certificate the poster presents."""
    kubeconfig = (kube_env.kubeconfig if credentials == "bearer token"
                  else kube_env.cp.kubeconfig())
    configuration = client.Configuration()
    config.load_kube_config(str(kubeconfig), client_configuration=configuration)
    assert configuration.host.startswith("https://")
    assert bool(configuration.cert_file) == (credentials == "client certificate")
    poster = poster_for(configuration)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "poster-1"},
           "spec": {"template": {"spec": {
               "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}],
               # Only the status node would take its pod (PodSecurity refuses it anyway).
               "nodeSelector": kube_env.node.selector,
               "tolerations": kube_env.node.tolerations}}}}
    body = json.dumps(job).encode()
    path = f"/apis/batch/v1/namespaces/{kube_env.namespace}/jobs"
    created = await poster.post(path, body, "", LIMITS)
    assert created.status == 201
    assert json.loads(created.data)["metadata"]["name"] == "poster-1"
    dry = await poster.post(path, json.dumps({**job, "metadata": {"name": "dry"}}).encode(),
                            "dryRun=All", LIMITS)
    assert dry.status == 201
    with pytest.raises(ApiException) as conflict:
        await poster.post(path, body, "", LIMITS)
    assert conflict.value.status == 409
    assert describe(conflict.value).reason == "AlreadyExists"
    assert [j["metadata"]["name"] for j in kube_env.jobs()] == ["poster-1"]  # dry: not stored
    poster.close()
    if credentials == "bearer token":
        # The header is what authenticates: a wrong token is the API server's 401.
        wrong = json.loads(kubeconfig.read_text())
        wrong["users"][0]["user"]["token"] = "not-a-token"
        (tmp_path / "wrong").write_text(json.dumps(wrong))
        configuration = client.Configuration()
        config.load_kube_config(str(tmp_path / "wrong"), client_configuration=configuration)
        poster = poster_for(configuration)
        with pytest.raises(ApiException) as refused:
            await poster.post(path, body, "", LIMITS)
        assert describe(refused.value).status == 401
        poster.close()


async def test_chunked_answers_keep_alive_and_fresh_credentials() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      seen: list[bytes]) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(chunked(b'{"kind":"Job","metadata":{"name":"x"}}'))
            await writer.drain()

    server, port, seen, accepted = await serve(handler)
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}",
                                         api_key={"authorization": "Bearer first"})
    poster = poster_for(configuration)
    async with server:
        first = await poster.post("/x", b"{}", "", LIMITS)
        assert json.loads(first.data)["metadata"]["name"] == "x"
        configuration.api_key = {"authorization": "Bearer rotated"}  # a 401 reload
        await poster.post("/x", b'{"a":1}', "dryRun=All", LIMITS)
        poster.close()
    assert accepted[0] == 1  # one connection, kept alive
    assert b"authorization: bearer first\r\n" in seen[0].lower()
    assert b"authorization: bearer rotated\r\n" in seen[1].lower()
    assert seen[1].startswith(b"POST /x?dryRun=All HTTP/1.1\r\n")
    assert seen[1].endswith(b'\r\n\r\n{"a":1}')


async def test_an_idle_connection_closed_by_the_server_is_replaced() -> None:
    async def one_answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                    seen: list[bytes]) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        # Closed without "Connection: close", like an idle timeout; the client may see the
        # end of file only once it sends on it.

    server, port, seen, accepted = await serve(one_answer_then_close)
    poster = poster_for(client.Configuration(host=f"http://127.0.0.1:{port}"))
    async with server:
        for _ in range(3):
            assert (await poster.post("/x", b"{}", "", LIMITS)).status == 201
            await asyncio.sleep(0.05)
        poster.close()
    assert len(seen) == 3 and accepted[0] == 3


@pytest.mark.parametrize("answer", [b"", b"HTTP/1.1 201 Created\r\nContent-Len"])
async def test_no_answer_or_half_an_answer_is_a_connection_error(answer: bytes) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  seen: list[bytes]) -> None:
        seen.append(await read_request(reader))
        writer.write(answer)
        await writer.drain()

    server, port, seen, _ = await serve(cut)
    poster = poster_for(client.Configuration(host=f"http://127.0.0.1:{port}"))
    async with server:
        with pytest.raises(ConnectionError, match="may have been applied"):
            await poster.post("/x", b"{}", "", LIMITS)
        poster.close()
    assert len(seen) == 1  # a fresh connection is not retried: the create may have landed
    assert describe(ConnectionError("x")).status == 0  # retried by the caller, maybe applied


async def test_a_silent_server_times_out_and_errors_keep_their_shape() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     seen: list[bytes]) -> None:
        seen.append(await read_request(reader))
        if len(seen) == 1:
            await asyncio.sleep(30)
        body = json.dumps({"kind": "Status", "reason": "TooManyRequests",
                           "message": "slow down"}).encode()
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    server, port, _, _ = await serve(silent)
    poster = poster_for(client.Configuration(host=f"http://127.0.0.1:{port}"))
    async with server:
        with pytest.raises(ConnectionError, match="no answer"):
            await poster.post("/x", b"{}", "", (5.0, 0.3))
        with pytest.raises(ApiException) as throttled:
            await poster.post("/x", b"{}", "", LIMITS)
        poster.close()
    failure = describe(throttled.value)
    assert (failure.status, failure.reason, failure.message, failure.retry_after) == \
        (429, "TooManyRequests", "slow down", 3.0)


async def test_concurrent_creates_open_connections_and_keep_max_idle_of_them() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   seen: list[bytes]) -> None:
        while True:
            seen.append(await read_request(reader))
            await asyncio.sleep(0.2)  # all twelve requests are in flight at once
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    server, port, seen, accepted = await serve(slow)
    poster = poster_for(client.Configuration(host=f"http://127.0.0.1:{port}"))  # max_idle=4
    async with server:
        answers = await asyncio.gather(*(poster.post("/x", b"{}", "", LIMITS)
                                         for _ in range(12)))
        assert [a.status for a in answers] == [201] * 12
        assert accepted[0] == 12  # no create waited for another's connection
        for _ in range(4):
            await poster.post("/x", b"{}", "", LIMITS)
        assert accepted[0] == 12  # idle ones kept alive and reused
        poster.close()
    assert len(seen) == 16


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_an_oversized_answer_is_refused(framing: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(poster_module, "MAX_BODY_BYTES", 64)
    big = b'{"kind":"Job","padding":"' + b"x" * 200 + b'"}'

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   seen: list[bytes]) -> None:
        seen.append(await read_request(reader))
        writer.write(chunked(big) if framing == "chunked" else
                     b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big))
        await writer.drain()

    server, port, _, _ = await serve(huge)
    poster = poster_for(client.Configuration(host=f"http://127.0.0.1:{port}"))
    async with server:
        with pytest.raises(ConnectionError, match="too large"):
            await poster.post("/x", b"{}", "", LIMITS)
        poster.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("kubernetes.default")]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "ca.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
async def tls_server(tls_files: tuple[Path, Path]) -> AsyncIterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      seen: list[bytes]) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    server, port, _, _ = await serve(handler, tls=context)
    async with server:
        yield port


async def test_tls_is_verified_with_the_configured_ca_and_server_name(
        tls_server: int, tls_files: tuple[Path, Path]) -> None:
    host = f"https://127.0.0.1:{tls_server}"
    trusted = client.Configuration(host=host)
    trusted.ssl_ca_cert = str(tls_files[0])
    trusted.tls_server_name = "kubernetes.default"  # the certificate's name, not the IP
    poster = poster_for(trusted)
    assert (await poster.post("/x", b"{}", "", LIMITS)).status == 201
    poster.close()

    wrong_name = client.Configuration(host=host)  # the IP is not in the certificate
    wrong_name.ssl_ca_cert = str(tls_files[0])
    unknown = client.Configuration(host=host)  # system CAs only
    for untrusted in (wrong_name, unknown):
        poster = poster_for(untrusted)
        # An OSError: retried by the caller, never trusted.
        with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
            await poster.post("/x", b"{}", "", LIMITS)
        poster.close()

    insecure = client.Configuration(host=host)
    insecure.verify_ssl = False  # kubeconfig insecure-skip-tls-verify
    poster = poster_for(insecure)
    assert (await poster.post("/x", b"{}", "", LIMITS)).status == 201
    poster.close()
