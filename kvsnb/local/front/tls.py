"""TLS for Local KVS: a local CA and a server certificate, or the user's own pair.

By default Local KVS makes (with ``cryptography``) a CA and a server certificate for
``127.0.0.1``, ``::1`` and ``localhost`` (and the bound host, if another) and keeps them in
``<data dir>/tls/``: ``ca.pem`` is what users trust (``AWS_CA_BUNDLE``, ``aws --ca-bundle``,
boto3 ``verify=``), ``server.pem``/``server-key.pem`` is what the server presents. They are
reused on every start with the same data directory, so a CA once trusted stays trusted; the
server certificate alone is renewed when it nears its end (or lacks a name now needed),
signed by the same CA.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_DIR = "tls"
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server-key.pem"
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")
CA_DAYS = 3650
CERT_DAYS = 365
RENEW_BEFORE_DAYS = 30


class TlsSetupError(ValueError):
    """The TLS files given or found cannot be used (the message says which and why)."""


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files Local KVS serves TLS with. ``ca`` is the local CA's certificate, or
    ``None`` for a user-supplied pair (whose issuer the user already trusts)."""

    cert: Path
    key: Path
    ca: Path | None

    def server_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` for the server side."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(
                f"cannot use certificate {self.cert} with key {self.key}: {exc}"
            ) from exc
        return ctx

    def spki_sha256(self) -> str:
        """Base64 SHA-256 of the server key's SubjectPublicKeyInfo: the value Chromium's
        ``--ignore-certificate-errors-spki-list`` takes to trust this certificate alone."""
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def user_files(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> TlsFiles:
    """A user-supplied certificate (chain) and key; checked by loading them."""
    files = TlsFiles(Path(cert), Path(key), None)
    for path in (files.cert, files.key):
        if not path.is_file():
            raise TlsSetupError(f"TLS file not found: {path}")
    files.server_context()
    return files


def local_ca_files(data_dir: Path, host: str = "127.0.0.1") -> TlsFiles:
    """The local CA and server certificate in ``data_dir/tls``, made on first use and reused
    after; the server certificate is re-issued by the same CA when it expires within
    ``RENEW_BEFORE_DAYS`` or does not name ``host``."""
    folder = data_dir / TLS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    ca_path, ca_key_path = folder / CA_FILE, folder / CA_KEY_FILE
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    names = _names(host)
    if ca_path.is_file() and ca_key_path.is_file():
        ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise TlsSetupError(f"{ca_key_path} is not the EC key Local KVS made")
    else:
        ca_cert, ca_key = _make_ca()
        _write_key(ca_key_path, ca_key)
        ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    if not _cert_usable(cert_path, key_path, ca_cert, names):
        cert, key = _make_server_cert(ca_cert, ca_key, names)
        _write_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(cert_path, key_path, ca_path)


def _names(host: str) -> list[str]:
    names = list(LOOPBACK_NAMES)
    if host and host not in names and host not in ("0.0.0.0", "::"):
        names.append(host)
    return names


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def _make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvsnb Local KVS"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"kvsnb Local KVS CA {now:%Y-%m-%d %H:%M}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
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
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server_cert(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: list[str]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    san: list[x509.GeneralName] = []
    for n in names:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            san.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Local KVS")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
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
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _cert_usable(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate, names: list[str]
) -> bool:
    """The stored server certificate is from this CA, valid for a while yet, names every
    name needed and matches its key."""
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    have = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    have |= set(san.get_values_for_type(x509.DNSName))
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    return (
        cert.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_BEFORE_DAYS)
        and all(str(ipaddress.ip_address(n)) in have if _is_ip(n) else n in have for n in names)
        and key.public_key().public_bytes(serialization.Encoding.DER, pub)
        == cert.public_key().public_bytes(serialization.Encoding.DER, pub)
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
