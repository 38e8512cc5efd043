"""Throwaway mutual-TLS material for the first start of the Milvus server (:mod:`.server`).

Milvus 2.3.5 listens on every network interface and starts with the built-in ``root:Milvus``
login. Started once with ``tlsMode: 2`` (mutual TLS) on its port and these files, it accepts
only a client that shows the client certificate made here, signed by a certificate authority
whose key is never written: nobody else can log in while the password is replaced.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from .errors import ServerError
from .files import write_atomic

#: The name the server's certificate is made for (and the client checks).
SERVER_NAME = "localhost"
#: How long the certificates are valid: one start, with room for a slow machine.
_VALID = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class MutualTLS:
    """The files of :func:`make`, all PEM.

    Attributes:
        ca: the certificate authority's certificate (both sides trust it).
        server_cert, server_key: the server's certificate (``localhost``, ``127.0.0.1``, ``::1``) and key.
        client_cert, client_key: the client's certificate and key.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make(folder: Path) -> MutualTLS:
    """Write a new certificate authority's certificate, a server and a client certificate signed
    by it, and their keys (P-256), into ``folder`` (which must exist and be private to this
    user); keys are written mode 0600, the authority's key is not written at all.

    Raises:
        ServerError: the ``cryptography`` package is missing (``pip install 'vitsearch[server]'``).
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError as exc:
        raise ServerError(
            "the Milvus server's first start needs the cryptography package: pip install 'vitsearch[server]'"
        ) from exc

    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_name = _name("vitsearch setup CA")
    ca = _signed(now, ca_name, ca_key, ca_key, ca_name, (x509.BasicConstraints(ca=True, path_length=0), True))
    hosts = x509.SubjectAlternativeName(
        [
            x509.DNSName(SERVER_NAME),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    server = _signed(now, _name(SERVER_NAME), server_key, ca_key, ca.subject, (hosts, False))
    client = _signed(now, _name("vitsearch"), client_key, ca_key, ca.subject)
    return MutualTLS(
        ca=_write(folder / "ca.pem", _pem(ca)),
        server_cert=_write(folder / "server.pem", _pem(server)),
        server_key=_write(folder / "server.key", _key_pem(server_key)),
        client_cert=_write(folder / "client.pem", _pem(client)),
        client_key=_write(folder / "client.key", _key_pem(client_key)),
    )


def _name(common: str):
    """An ``x509.Name`` of just a common name."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _signed(now: datetime.datetime, subject, key, issuer_key, issuer, *extensions):
    """The certificate of ``key``'s public key for ``subject`` (an ``x509.Name``), valid from 5
    minutes before ``now`` for :data:`_VALID`, with ``(extension, critical)`` pairs, signed by
    ``issuer_key`` as ``issuer`` (SHA-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes) -> Path:
    """``data`` written to ``path``, mode 0600 (:func:`~.files.write_atomic`)."""
    write_atomic(path, data, mode=0o600)
    return path
