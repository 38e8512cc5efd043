"""Throwaway mutual-TLS material for the first start of the Milvus server (:mod:`.server`).

Milvus 2.3.5 listens on every network interface and starts with the built-in ``root:Milvus``
login. Started once with ``tlsMode: 2`` (mutual TLS) on its port and these files, it accepts
only a client that shows the client certificate made here, signed by a certificate authority
whose key is never written: nobody else can log in while the password is replaced.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ServerError

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
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as exc:
        raise ServerError(
            "the Milvus server's first start needs the cryptography package: pip install 'vitsearch[server]'"
        ) from exc

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def signed(subject: str, key, issuer_key, issuer: x509.Name, *extensions) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALID)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(path: Path, data: bytes) -> Path:
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(data)
        return path

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = signed(
        "vitsearch setup CA",
        ca_key,
        ca_key,
        name("vitsearch setup CA"),
        (x509.BasicConstraints(ca=True, path_length=0), True),
    )
    hosts = x509.SubjectAlternativeName(
        [
            x509.DNSName(SERVER_NAME),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    server = signed(SERVER_NAME, server_key, ca_key, ca.subject, (hosts, False))
    client = signed("vitsearch", client_key, ca_key, ca.subject)
    return MutualTLS(
        ca=write(folder / "ca.pem", pem(ca)),
        server_cert=write(folder / "server.pem", pem(server)),
        server_key=write(folder / "server.key", key_pem(server_key)),
        client_cert=write(folder / "client.pem", pem(client)),
        client_key=write(folder / "client.key", key_pem(client_key)),
    )
