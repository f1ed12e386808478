"""guards.netguard: ``guarded_session``, ``resolve_allowed`` and ``blocked_reason`` directly
(the address policy and the loader's use of it are in images/test_loader.py).

Against loopback servers: a blocked address is refused before any connection and the reason is
found in the exception requests raises; an allowed network is fetched from even with an
environment proxy set (the session must not hand the connection to a proxy it cannot check);
redirects are capped; the CA bundle the environment names is trusted; network lists parse from
text or lists, and a scoped IPv6 address is judged without its zone.
"""

import ipaddress
import socket

import pytest
import requests

from tests.support.net import ImageHost, free_port
from transforms.core.guards import netguard


@pytest.fixture
def host():
    server = ImageHost({"/a.jpg": (200, b"jpeg bytes"), "/loop": (302, b"", {"Location": "/loop"})})
    yield server
    server.close()


def test_a_blocked_address_is_refused_before_connecting(host):
    with pytest.raises(requests.exceptions.ConnectionError) as info:
        netguard.guarded_session().get(host.base + "/a.jpg", timeout=5)
    reason = netguard.blocked_reason(info.value)
    assert reason and "127.0.0.1" in reason and "--allow_image_networks" in reason
    assert host.hits == 0


def test_an_allowed_network_is_fetched_directly_whatever_the_proxy_variables(host, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/private-ca.pem")
    session = netguard.guarded_session(netguard.parse_networks("127.0.0.0/8"))
    assert session.get(host.base + "/a.jpg", timeout=5).content == b"jpeg bytes"
    assert session.verify == "/etc/private-ca.pem"


def test_redirects_are_capped(host):
    session = netguard.guarded_session(netguard.parse_networks("127.0.0.1"), max_redirects=2)
    with pytest.raises(requests.exceptions.TooManyRedirects):
        session.get(host.base + "/loop", timeout=5)
    assert host.hits == 3  # the first request and two redirects


def test_resolve_allowed_checks_what_the_name_resolves_to():
    port = 8080
    with pytest.raises(netguard.BlockedAddress, match="localhost resolves to"):
        netguard.resolve_allowed("localhost", port)
    family, sockaddr = netguard.resolve_allowed(
        "localhost", port, netguard.parse_networks("127.0.0.0/8, ::1")
    )
    assert family in (socket.AF_INET, socket.AF_INET6) and sockaddr[1] == port
    assert ipaddress.ip_address(sockaddr[0]).is_loopback


def test_blocked_reason_is_none_for_other_failures():
    assert netguard.blocked_reason(requests.exceptions.ConnectionError("refused")) is None
    inner = netguard.BlockedAddress("x resolves to 10.0.0.1")
    wrapped = requests.exceptions.ConnectionError(OSError("pool", inner))
    assert netguard.blocked_reason(wrapped) == "x resolves to 10.0.0.1"


def test_networks_parse_from_text_or_a_list():
    assert netguard.parse_networks(None) == netguard.parse_networks("") == ()
    assert netguard.parse_networks(["10.1.2.3/8", " ", "fd00::/8"]) == (
        ipaddress.ip_network("10.0.0.0/8"),  # host bits are allowed and dropped
        ipaddress.ip_network("fd00::/8"),
    )
    with pytest.raises(ValueError, match="'intranet' is not an IP network"):
        netguard.parse_networks("10.0.0.0/8, intranet")
    link_local = netguard.parse_networks("fe80::/10")
    assert netguard.address_allowed("fe80::1%eth0", link_local)
    assert not netguard.address_allowed("fe80::1%eth0")
