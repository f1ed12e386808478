"""The API session: connection pool, proxies, CA bundle and headers, read once; what a failed
proxy did, in one line. No Beam import.

``new_session`` is the one place a ``requests.Session`` for an API is made (the online client,
the batch transport, the preflight); ``api.client`` sends on it and retries, and names a proxy
failure with ``proxy_failure``.
"""

from __future__ import annotations

import re
import urllib.parse

import requests

from transforms.core.guards import content_coding, tls

USER_AGENT = "vision-enrich/0.1"

_PROXY_STATUS = re.compile(r"\b(40[37]|50[0-9])\b([A-Za-z ]{0,40})")


def new_session(api_key: str | None, pool_size: int, url: str | None = None) -> requests.Session:
    """A session whose connection pool holds ``pool_size`` keep-alive connections.

    The environment (HTTPS_PROXY / HTTP_PROXY / NO_PROXY, the CA bundle ``tls.ca_bundle``
    names) is read once here for ``url``, not on every request: with ``trust_env`` on, requests
    re-reads them and looks for a ~/.netrc on each call, which at hundreds of requests a second is
    a measurable share of the process. An https:// API is reached through a proxy by a CONNECT
    tunnel, so the key never crosses the proxy in clear. ``Accept-Encoding`` names only what
    ``guards.content_coding`` can decode.
    """
    session = requests.Session()
    if url is not None:
        session.proxies.update(requests.utils.get_environ_proxies(url))
        bundle = tls.ca_bundle()
        if bundle:
            session.verify = bundle
        session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=0
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept"] = "application/json"
    session.headers["Accept-Encoding"] = content_coding.ACCEPT_ENCODING
    if api_key:
        session.headers["Authorization"] = f"Bearer {api_key}"
    return session


def proxy_failure(session: requests.Session, url: str, host: str, exc: BaseException) -> str:
    """One line naming the proxy ``session`` reaches ``url`` through (never its user:password),
    what it did (its 403/407/5xx, or a broken tunnel) and what to check; not yet redacted."""
    proxy = session.proxies.get(urllib.parse.urlsplit(url).scheme) or ""
    where = urllib.parse.urlsplit(proxy).hostname or "?"
    port = urllib.parse.urlsplit(proxy).port
    where = f"{where}:{port}" if port else where  # never its user:password
    cause = _PROXY_STATUS.search(str(exc))
    said = f"answered {cause.group(1)} {cause.group(2).strip()}" if cause else "broke the tunnel"
    return (
        f"the proxy {where} {said} on the way to {host} "
        f"({type(exc).__name__}); check HTTPS_PROXY / HTTP_PROXY (and its credentials), or "
        "list the API's host in NO_PROXY"
    )
