"""Keys and certificates for a Flower deployment (``cryptography`` only, no openssl CLI).

- a CA and a server certificate for the SuperLink's TLS (SANs: the hosts devices dial);
- a SuperNode authentication key pair per device (ECDSA P-384, OpenSSH format, as
  ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read);
- a device-local CA and certificate for the SuperNode's loopback Runtime API.

Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.security.keyfiles import read_owner_only, write_owner_only

LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_owner_only(path, pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsearch"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _load_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, CertificateIssuerPublicKeyTypes, CertificateIssuerPrivateKeyTypes]:
    """The CA's certificate, public key and private key. A CA signs certificates, so its keys
    are of the signing (issuer) key types; a non-signing key fails in ``sign``."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(read_owner_only(Path(key_path)), None)
    return (
        cert,
        cast(CertificateIssuerPublicKeyTypes, cert.public_key()),
        cast(CertificateIssuerPrivateKeyTypes, key),
    )


def create_ca(cert_path: Path, key_path: Path, common_name: str, days: int = 3650) -> None:
    """A self-signed CA certificate and its private key."""
    key = _new_key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write_key(Path(key_path), key)
    _write_cert(Path(cert_path), cert)


def issue_server_cert(
    ca_cert_path: Path,
    ca_key_path: Path,
    cert_path: Path,
    key_path: Path,
    hosts: list[str] | tuple[str, ...],
    days: int = 825,
) -> None:
    """A TLS server certificate signed by the CA, valid for ``hosts`` (names or IPs)."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or IP")
    ca_cert, ca_public, ca_key = _load_ca(ca_cert_path, ca_key_path)
    key = _new_key()
    cert = (
        _builder(_name(hosts[0]), ca_cert.subject, key.public_key(), days)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(Path(key_path), key)
    _write_cert(Path(cert_path), cert)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def create_local_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A one-off CA and a loopback certificate in ``folder``; the CA key is not kept.

    Returns (ca_cert, cert, key) paths, for ``flower-supernode --ssl-ca-certfile
    --ssl-certfile --ssl-keyfile`` (the Runtime API between a SuperNode and its apps).
    """
    folder = Path(folder)
    ca_cert, ca_key = folder / "runtime-ca.crt", folder / ".runtime-ca.key"
    cert, key = folder / "runtime.crt", folder / "runtime.key"
    create_ca(ca_cert, ca_key, "fedsearch device-local CA", days=3650)
    try:
        issue_server_cert(ca_cert, ca_key, cert, key, LOCAL_HOSTS, days=3650)
    finally:
        ca_key.unlink(missing_ok=True)
    return ca_cert, cert, key


def create_node_auth_keys(private_path: Path, public_path: Path) -> str:
    """A SuperNode authentication key pair (ECDSA P-384, OpenSSH); returns the public key."""
    key = ec.generate_private_key(ec.SECP384R1())
    write_owner_only(
        Path(private_path),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    Path(public_path).write_bytes(public + b"\n")
    return public.decode("ascii")
