"""TLS as users meet it: which CA bundle the environment names, and what a failed handshake
means, in one line. No Beam import.

Used by the API session and client (``api.session``, ``api.client``), the batch transport and
the image fetcher alike, so a private or corporate CA trusted through ``REQUESTS_CA_BUNDLE`` or
``SSL_CERT_FILE`` is trusted for every request the job makes, and an unknown CA, a wrong host
name or an expired certificate reads the same wherever it is met.
"""

from __future__ import annotations

import os
import re

from transforms.core.guards import sanitize

# what OpenSSL says, and what it means for the person running the job
_TLS_CAUSES = (
    ("certificate has expired", "its certificate has expired"),
    ("not yet valid", "its certificate is not valid yet (check this machine's clock)"),
    ("hostname mismatch", "its certificate is for another host name"),
    ("doesn't match", "its certificate is for another host name"),
    ("ip address mismatch", "its certificate is for another host name"),
    (
        "unable to get local issuer certificate",
        "its certificate is signed by a CA this machine does not trust",
    ),
    ("self-signed certificate", "its certificate is signed by a CA this machine does not trust"),
    ("self signed certificate", "its certificate is signed by a CA this machine does not trust"),
    ("wrong_version_number", "it does not speak TLS on that port (http:// rather than https://?)"),
    ("wrong version number", "it does not speak TLS on that port (http:// rather than https://?)"),
)


def describe_failure(host: str, exc: BaseException, otherwise: str = "check --api_base") -> str:
    """One line naming the host and why TLS to it failed, and what to do (``otherwise`` when
    it is not a CA to trust)."""
    text = str(exc).lower()
    cause = next((said for seen, said in _TLS_CAUSES if seen in text), None)
    if cause is None:
        found = re.search(r"\[ssl[^\]]*\]\s*([^()'\"]{1,120})", text)
        cause = f"TLS failed ({found.group(1).strip()})" if found else "TLS failed"
    fix = (
        "trust its CA with REQUESTS_CA_BUNDLE or SSL_CERT_FILE (a PEM bundle)"
        if "CA this machine" in cause
        else otherwise
    )
    return sanitize.text(f"TLS to {host} failed: {cause}; {fix}", 400)


def ca_bundle() -> str | None:
    """The CA bundle named by the environment: REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, then OpenSSL's
    SSL_CERT_FILE (which ``requests`` alone would not read: it trusts certifi's bundle)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value:
            return value
    return None
