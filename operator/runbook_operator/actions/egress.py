"""Where the HTTP actions may connect: never to link-local, cloud metadata or unspecified addresses.

A policy author names the URL, but the operator holds the credentials: a request to
``169.254.169.254`` from the operator's pod answers with the node's or the pod's cloud
credentials, which the step's output would then carry into status. So every HTTP client an
action uses is made by :func:`client`, and every connection it opens goes through
:class:`GuardedTransport`: it resolves the host (host aliases included), refuses when any
address it resolves to is refused by :func:`refusal`, and connects to the very address it
checked (a second lookup could answer differently: DNS rebinding). TLS still verifies the
certificate against the host name. Actions that are not HTTP (``notify.email``) or use
another client library (``docker.*`` over ``tcp://``) call :func:`checked_address` and
connect to the address it returns.

An IPv6 address that carries an IPv4 one (IPv4-mapped and -translated, IPv4-compatible,
NAT64, 6to4, Teredo) is refused when the IPv4 address is: a NAT64 gateway or a tunnel
would deliver it there.

``runbook-operator run --allow-link-local`` lifts the refusal for the whole process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ipaddress
import re
import socket
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from runbook_operator.actions.api import ActionFailure, tls_context

# httpcore asks sniffio which async library runs, several times per request. sniffio is not
# installed (anyio 4 does not need it), and a failed import searches sys.path anew each time:
# ~125 µs, 6% of the operator's CPU in the N=1000 benchmark. None in sys.modules fails it at once.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA = "a link-local or cloud metadata address"
UNSPECIFIED = "an unspecified address, which reaches the operator's own host"
REFUSED = tuple(
    (ipaddress.ip_network(network), why)
    for network, why in (
        ("169.254.0.0/16", METADATA),  # IPv4 link-local: AWS, GCP, Azure, OpenStack, Oracle metadata at .169.254
        ("168.63.129.16/32", METADATA),  # Azure's wireserver (VM agent, extensions, certificates)
        ("100.100.100.200/32", METADATA),  # Alibaba Cloud's metadata
        ("fe80::/10", METADATA),  # IPv6 link-local
        ("fd00:ec2::/32", METADATA),  # AWS's instance services over IPv6: metadata ::254, DNS ::253, time ::123
        ("fd20:ce::254/128", METADATA),  # GCP's metadata over IPv6 (only this address: VPCs get ULAs from fd20::/20)
        ("0.0.0.0/8", UNSPECIFIED),  # "this host on this network": a connection to 0.0.0.0 reaches the local host
        ("::/128", UNSPECIFIED),
    )
)
REFUSED_NETWORKS = tuple(network for network, _ in REFUSED)
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix (RFC 6052)
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use prefixes (RFC 8215): /48 to /96 inside it
FLAG = "--allow-link-local"
_allow_link_local = False


def allow_link_local(allowed: bool) -> None:
    """Set by ``runbook-operator run`` from its flag; process-wide, as host aliases are."""
    global _allow_link_local
    _allow_link_local = allowed


class EgressRefused(Exception):
    """The host resolves to an address the operator does not connect to; the message says why."""


def refused(address: str) -> bool:
    """Whether the operator refuses to connect to ``address`` (an IP address; a name is not refused)."""
    return refusal(address) is not None


def refusal(address: str) -> str | None:
    """Why the operator does not connect to ``address``, e.g. ``a link-local or cloud metadata
    address``, or ``169.254.169.254 through NAT64, a link-local ...``; None when it may (or for a name)."""
    ip = _literal(address)
    if ip is None:
        return None
    why = _why(ip)
    if why is not None or not isinstance(ip, ipaddress.IPv6Address):
        return why
    for form, inner in _embedded(ip):
        # only the metadata ones: 0.0.0.0 behind a NAT64 gateway or a tunnel is not this host
        if _why(inner) == METADATA:
            return f"{inner} through {form}, {METADATA}"
    return None


def _why(ip: IP) -> str | None:
    return next((why for network, why in REFUSED if ip in network), None)


def _embedded(ip: ipaddress.IPv6Address) -> Iterator[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, with the name of the form that carries each."""
    number = int(ip)
    if number >> 32 == 0xFFFF_0000:  # ::ffff:0:a.b.c.d (SIIT, RFC 2765)
        yield "IPv4-translated", ipaddress.IPv4Address(number & 0xFFFF_FFFF)
    if number >> 32 == 0 and number > 1:  # ::a.b.c.d (RFC 4291, deprecated); :: and ::1 are not
        yield "IPv4-compatible", ipaddress.IPv4Address(number & 0xFFFF_FFFF)
    if ip in NAT64:
        yield "NAT64", _rfc6052(ip, 96)
    if ip in NAT64_LOCAL:  # the network chose the prefix's length: every length it may have
        for length in (48, 56, 64, 96):
            yield "NAT64", _rfc6052(ip, length)
    if ip.sixtofour is not None:
        yield "6to4", ip.sixtofour
    if ip.teredo is not None:
        server, client = ip.teredo
        yield "Teredo", client
        yield "Teredo", server


def _rfc6052(ip: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address embedded after a NAT64 prefix of that length (RFC 6052 2.2: bits 64-71 are skipped)."""
    packed = ip.packed
    octets = [i for i in range(prefix_length // 8, 16) if i != 8][:4]
    return ipaddress.IPv4Address(bytes(packed[i] for i in octets))


def _literal(text: str) -> IP | None:
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
        for address in addresses:
            why = refusal(address)
            if why is not None:
                via = "" if _literal(host) == _literal(address) else f" resolves to {address}, which"
                raise EgressRefused(f"{host}{via} is {why}: refused (start the operator with {FLAG} to allow it)")
    return addresses[0]


def client(**options: Any) -> httpx.AsyncClient:
    """The HTTP client every action uses: each connection through :class:`GuardedTransport`.

    ``options`` are httpx.AsyncClient's (timeout, follow_redirects, max_redirects, event_hooks,
    headers); redirects are not followed unless asked. Nothing may replace the transport or
    route around it (a proxy from the environment, another transport mounted for some URLs)."""
    bypass = {"transport", "mounts", "proxy", "proxies", "app", "verify", "cert", "trust_env"} & options.keys()
    if bypass:
        raise TypeError(f"egress.client() takes no {', '.join(sorted(bypass))}: every connection is guarded")
    options.setdefault("follow_redirects", False)
    return httpx.AsyncClient(transport=GuardedTransport(), trust_env=False, **options)


_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,64}")


@contextlib.contextmanager
def reaching(where: str, seconds: float) -> Iterator[None]:
    """What can go wrong reaching a server (refused by the guard, no answer in time, no connection)
    as the step's failure, saying ``where``: an :class:`ActionFailure`."""
    try:
        yield
    except EgressRefused as err:
        raise ActionFailure(f"{where}: {err}") from None
    except httpx.TimeoutException:
        raise ActionFailure(f"{where}: no answer within {seconds:g}s") from None
    except httpx.HTTPError as err:
        raise ActionFailure(f"{where}: {type(err).__name__}: {err or 'connection failed'}") from None


def content_type(headers: Mapping[str, str]) -> str:
    """An answer's media type as a message may quote it (``text/plain``): never the header's
    parameters, and nothing that is not a media type (the header is the server's text too)."""
    value = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if not value:
        return "no content type"
    return value if _MEDIA_TYPE.fullmatch(value) else "an unreadable content type"


def is_json(headers: Mapping[str, str]) -> bool:
    media = content_type(headers)
    return media == "application/json" or media.endswith("+json")


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
