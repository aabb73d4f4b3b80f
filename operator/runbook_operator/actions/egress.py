"""Where http.* and notify.* may connect: never to link-local or cloud metadata addresses.

A policy author names the URL, but the operator holds the credentials: a request to
``169.254.169.254`` from the operator's pod answers with the node's or the pod's cloud
credentials, which the step's output would then carry into status. So every connection
these actions open goes through :class:`GuardedTransport`: it resolves the host (host
aliases included), refuses when any address it resolves to is link-local or a metadata
address, and connects to the very address it checked (a second lookup could answer
differently: DNS rebinding). TLS still verifies the certificate against the host name.

``runbook-operator run --allow-link-local`` lifts the refusal for the whole process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

from runbook_operator.actions.api import tls_context

REFUSED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local: AWS, GCP, Azure, OpenStack metadata at 169.254.169.254
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
    )
)
FLAG = "--allow-link-local"
_allow_link_local = False


def allow_link_local(allowed: bool) -> None:
    """Set by ``runbook-operator run`` from its flag; process-wide, as host aliases are."""
    global _allow_link_local
    _allow_link_local = allowed


class EgressRefused(Exception):
    """The host resolves to an address the operator does not connect to; the message says why."""


def refused(address: str) -> bool:
    ip = _literal(address)
    return ip is not None and any(ip in network for network in REFUSED_NETWORKS)


def _literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``text`` writes (an IPv4-mapped IPv6 one as IPv4), or None for a name."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 scope (fe80::1%eth0) is no part of it
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


async def checked_address(host: str, port: int) -> str:
    """The address to connect to for ``host``, after checking every address it resolves to."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise httpx.ConnectError(f"cannot resolve {host}: {err}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise httpx.ConnectError(f"cannot resolve {host}: no address")
    if not _allow_link_local:
        bad = next((a for a in addresses if refused(a)), None)
        if bad is not None:
            via = "" if _literal(host) == _literal(bad) else f" resolves to {bad}, which"
            raise EgressRefused(
                f"{host}{via} is a link-local or cloud metadata address: refused "
                f"(start the operator with {FLAG} to allow it)"
            )
    return addresses[0]


class GuardedTransport(httpx.AsyncBaseTransport):
    """An HTTP transport that connects only to checked addresses (see the module's docstring).

    The client above it keeps the host names (redirects, Host header, messages); only the
    request on the wire names the address, with the name kept for TLS (SNI and certificate).
    """

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport(verify=tls_context())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        address = await checked_address(url.host, url.port or (443 if url.scheme == "https" else 80))
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=address),
            headers=request.headers,  # Host: still the name
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": url.host},
        )
        return await self._inner.handle_async_request(pinned)

    async def aclose(self) -> None:
        await self._inner.aclose()
