"""A test PKI made with ``cryptography``: a CA to trust, and server certificates that are right
or wrong in the ways users meet.

``make_pki(folder)`` writes, as PEM files in ``folder``:

- ``ca.pem`` — the test CA (``Pki.ca_bundle``: the file to put in ``REQUESTS_CA_BUNDLE`` or
  ``SSL_CERT_FILE``);
- ``good`` — a server certificate from that CA for ``127.0.0.1``, ``::1`` and ``localhost``;
- ``wrong_host`` — from that CA, for ``wrong-host.invalid`` only (a host name mismatch);
- ``expired`` — from that CA, for the loopback names, that expired yesterday;
- ``unknown_ca`` — for the loopback names, from a second CA nobody trusts.

Each server certificate is a ``ServerCert`` (``cert``, ``key`` paths), the shape
``tests.support.nginx.Nginx(tls=...)`` takes. Keys are P-256 (fast to make).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


@dataclasses.dataclass(frozen=True)
class ServerCert:
    cert: str
    key: str


@dataclasses.dataclass(frozen=True)
class Pki:
    folder: str
    ca_bundle: str
    good: ServerCert
    wrong_host: ServerCert
    expired: ServerCert
    unknown_ca: ServerCert


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vision-enrich tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca(common_name: str, now: datetime.datetime):
    key = _key()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _alt_names(names) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _leaf(ca_cert, ca_key, names, not_before, not_after):
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_alt_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write_cert(path: str, cert) -> str:
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: str, key) -> str:
    with open(path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def _write_pair(folder: str, stem: str, cert, key) -> ServerCert:
    return ServerCert(
        cert=_write_cert(os.path.join(folder, f"{stem}.pem"), cert),
        key=_write_key(os.path.join(folder, f"{stem}.key"), key),
    )


def make_pki(folder) -> Pki:
    """The test CA and its server certificates, written to ``folder`` (made if missing)."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert, ca_key = _ca("vision-enrich test CA", now)
    rogue_cert, rogue_key = _ca("an untrusted CA", now)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    gone = (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
    return Pki(
        folder=folder,
        ca_bundle=_write_cert(os.path.join(folder, "ca.pem"), ca_cert),
        good=_write_pair(folder, "good", *_leaf(ca_cert, ca_key, LOOPBACK_NAMES, *valid)),
        wrong_host=_write_pair(
            folder, "wrong-host", *_leaf(ca_cert, ca_key, ("wrong-host.invalid",), *valid)
        ),
        expired=_write_pair(folder, "expired", *_leaf(ca_cert, ca_key, LOOPBACK_NAMES, *gone)),
        unknown_ca=_write_pair(
            folder, "unknown-ca", *_leaf(rogue_cert, rogue_key, LOOPBACK_NAMES, *valid)
        ),
    )
