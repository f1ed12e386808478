"""Keep image fetches off private networks (no Beam import).

A job that fetches http(s) images named in a table must not be turned against the network it
runs in: the GCP metadata server (169.254.169.254) sits next to every Dataflow worker, and
loopback and private addresses reach internal services. ``guarded_session`` returns a
``requests.Session`` whose every new connection — the first one and each one a redirect
leads to — resolves the host itself, refuses any address that is not globally routable unless
it lies in an explicitly allowed network, and connects to exactly the address it checked (so a
DNS answer that changes between check and connect cannot slip through).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as u3connection

from transforms.core.guards import tls

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddress(OSError):
    """The host resolves to an address the policy does not allow."""


def parse_networks(text: str | Iterable[str] | None) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> networks; ValueError names the bad entry."""
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    networks = []
    for item in (i.strip() for i in items):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network (e.g. 10.1.0.0/16)") from None
    return tuple(networks)


def address_allowed(ip: str, allowed: tuple[Network, ...] = ()) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in allowed):
        return True
    return addr.is_global and not addr.is_multicast


def resolve_allowed(host: str, port: int, allowed: tuple[Network, ...] = ()) -> tuple:
    """The first resolved address of ``host`` if every address it resolves to is allowed."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        if not address_allowed(sockaddr[0], allowed):
            raise BlockedAddress(
                f"{host} resolves to {sockaddr[0]}, a private, loopback, link-local or reserved "
                "address; images are not fetched from there unless --allow_image_networks "
                "names its network"
            )
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _guarded_new_conn(self) -> socket.socket:
    host = self._dns_host.rstrip(".")
    try:
        _, sockaddr = resolve_allowed(host, self.port, self.allowed_networks)
    except socket.gaierror as exc:
        raise NewConnectionError(self, f"cannot resolve {host}: {exc}") from exc
    try:
        return u3connection.create_connection(
            sockaddr[:2],
            self.timeout,
            source_address=self.source_address,
            socket_options=self.socket_options,
        )
    except TimeoutError as exc:
        raise ConnectTimeoutError(self, f"connection to {host} timed out") from exc
    except OSError as exc:
        raise NewConnectionError(self, f"failed to connect to {host}: {exc}") from exc


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, allowed: tuple[Network, ...], **kwargs):
        attrs = {"allowed_networks": allowed, "_new_conn": _guarded_new_conn}
        http_conn = type("GuardedHTTPConnection", (HTTPConnection,), attrs)
        https_conn = type("GuardedHTTPSConnection", (HTTPSConnection,), attrs)
        self._pool_classes = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type(
                "GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}
            ),
        }
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes


def guarded_session(
    allowed: tuple[Network, ...] = (), pool_size: int = 8, max_redirects: int = 5
) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # an environment proxy would connect on our behalf, unchecked
    bundle = tls.ca_bundle()  # ...but the CA the environment trusts is trusted here too
    if bundle:
        session.verify = bundle
    session.max_redirects = max_redirects
    adapter = _GuardedAdapter(allowed, pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def blocked_reason(exc: BaseException) -> str | None:
    """The BlockedAddress message somewhere in a requests/urllib3 exception chain, if any."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, BlockedAddress):
            return str(e)
        reason = getattr(e, "reason", None)  # urllib3's MaxRetryError; a str on some errors
        stack.extend([e.__cause__, e.__context__])
        if isinstance(reason, BaseException):
            stack.append(reason)
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return None
