"""Host aliases for the operator process: what a pod's ``spec.hostAliases`` does, as a flag.

``runbook-operator run --host-alias redis.ishchat.svc=127.0.10.5`` makes every connection an
action opens to ``redis.ishchat.svc`` go to ``127.0.10.5`` (same port). The local lab uses it
so the ISH Chat pack runs unchanged, its literal in-cluster hosts answered by processes on
loopback addresses. Aliases map a name to an IP address only, never to another name, and
only names given on the command line: incident text cannot add one.

It works at the one place every client library resolves names: ``socket.getaddrinfo``
(httpx/anyio, redis-py and psycopg's async connect all go through it; the Kubernetes client
talks to the API server by the kubeconfig's address, which is not aliased).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Any


def parse(items: Iterable[str]) -> dict[str, str]:
    """``NAME=IP`` strings to a mapping; ValueError names the bad item."""
    aliases: dict[str, str] = {}
    for item in items:
        name, sep, address = item.partition("=")
        name = name.strip().lower().rstrip(".")
        if not sep or not name:
            raise ValueError(f"--host-alias {item!r}: expected NAME=IP")
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            raise ValueError(f"--host-alias {item!r}: {address.strip()!r} is not an IP address") from None
        aliases[name] = str(ip)
    return aliases


def install(aliases: Mapping[str, str]) -> None:
    """Route lookups of the aliased names to their addresses, for this whole process."""
    if not aliases:
        return
    table = {name.lower(): ip for name, ip in aliases.items()}
    resolve = getattr(socket.getaddrinfo, "__wrapped__", socket.getaddrinfo)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode("idna")
        if isinstance(host, str):
            host = table.get(host.lower().rstrip("."), host)
        return resolve(host, *args, **kwargs)

    getaddrinfo.__wrapped__ = resolve  # type: ignore[attr-defined]
    socket.getaddrinfo = getaddrinfo
