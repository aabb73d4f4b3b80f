"""--host-alias: the pack's in-cluster names reach loopback addresses through every client library."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import redis.asyncio

from runbook_operator.adapters import hostaliases

ALIAS = "service.ishchat.svc"


@pytest.fixture
def listener() -> Iterator[tuple[int, list[str]]]:
    """A TCP server on 127.0.0.2 (not 127.0.0.1, so only the alias can lead there) that records peers."""
    server = socket.create_server(("127.0.0.2", 0))
    seen: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            seen.append(conn.getsockname()[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    server.shutdown(socket.SHUT_RDWR)  # wakes the accept()
    server.close()
    thread.join(5)


@pytest.fixture
def aliased(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", socket.getaddrinfo)  # restored after the test
    hostaliases.install(hostaliases.parse([f"{ALIAS.upper()}.=127.0.0.2"]))


def test_parse_rejects_what_is_not_name_equals_ip() -> None:
    assert hostaliases.parse(["redis.ishchat.svc=127.0.10.5", "db=::1"]) == {
        "redis.ishchat.svc": "127.0.10.5",
        "db": "::1",
    }
    with pytest.raises(ValueError, match="expected NAME=IP"):
        hostaliases.parse(["redis.ishchat.svc"])
    with pytest.raises(ValueError, match=r"'evil\.example\.com' is not an IP address"):
        hostaliases.parse(["redis.ishchat.svc=evil.example.com"])


async def test_httpx_reaches_the_aliased_address(aliased: None, listener: tuple[int, list[str]]) -> None:
    port, seen = listener
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{ALIAS}:{port}/health")
    assert response.text == "ok"
    assert response.request.headers["host"] == f"{ALIAS}:{port}"  # the name is kept for the server
    assert seen == ["127.0.0.2"]


async def test_redis_and_psycopg_connect_to_the_aliased_address(aliased: None, listener: tuple[int, list[str]]) -> None:
    port, seen = listener
    client = redis.asyncio.Redis(host=ALIAS, port=port, socket_connect_timeout=2)
    with pytest.raises(redis.RedisError):
        await client.ping()  # the listener speaks HTTP, not RESP: what matters is where it connected
    await client.aclose()
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(host=ALIAS, port=port, connect_timeout=2)
    await asyncio.sleep(0.1)
    assert seen[:1] == ["127.0.0.2"] and len(seen) >= 2 and set(seen) == {"127.0.0.2"}


def test_names_without_an_alias_resolve_as_before(aliased: None) -> None:
    assert socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)[0][4][0] in {"127.0.0.1", "::1"}
    assert socket.getaddrinfo(ALIAS, 80, type=socket.SOCK_STREAM)[0][4] == ("127.0.0.2", 80)
