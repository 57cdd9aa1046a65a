"""A throw-away certificate authority so simulated HTTPS listeners can be validated like real ones.

Clients connect by IP address (no SNI), so every HTTPS host gets its own certificate whose SAN is its
address. One EC key is shared by all server certificates: generating thousands of RSA keys would take
minutes, and nothing in the simulation depends on keys being distinct. Certificates are signed with
SHA-256, which fixes the NTLM channel-binding hash (RFC 5929 tls-server-end-point) to SHA-256 as well.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_VALIDITY = datetime.timedelta(days=30)


class TestAuthority:
    """Creates the CA once; `server_context(address)` issues a certificate for one listening address."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        self._not_before = now - datetime.timedelta(minutes=5)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Exchange simulator test CA")])
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(self._ca_name)
            .issuer_name(self._ca_name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_file = self.directory / "ca.pem"
        self.ca_file.write_bytes(self._ca_cert.public_bytes(serialization.Encoding.PEM))
        self._server_key = ec.generate_private_key(ec.SECP256R1())
        self._key_file = self.directory / "server-key.pem"
        fd = os.open(self._key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(
                self._server_key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )

    def server_context(self, address: str) -> tuple[ssl.SSLContext, bytes]:
        """Return a server SSL context for `address` and the NTLM channel-binding application data."""
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(self._ca_name)
            .public_key(self._server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        cert_file = self.directory / f"server-{address}.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, self._key_file)
        # Client certificates are optional: only certificate authentication uses one (mapped to a user by CN).
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cafile=self.ca_file)
        cert_der = cert.public_bytes(serialization.Encoding.DER)
        return context, b"tls-server-end-point:" + hashlib.sha256(cert_der).digest()

    def client_certificate(self, username: str) -> tuple[Path, Path]:
        """A client certificate for WinRM certificate authentication, mapped to `username` by its CN (a
        stand-in for Windows' certificate mapping, `winrm create winrm/config/service/certmapping`)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, username)]))
            .issuer_name(self._ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        stem = hashlib.sha256(username.encode()).hexdigest()[:12]
        cert_file, key_file = self.directory / f"client-{stem}.pem", self.directory / f"client-{stem}-key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return cert_file, key_file
