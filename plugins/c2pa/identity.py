"""A local signing identity for people without a commercial C2PA certificate.

``create_identity`` makes a self-signed CA and a signing certificate issued by it, with what the
C2PA SDK checks: the digitalSignature key usage, the emailProtection extended key usage and an
AuthorityKeyIdentifier (without the AKI or the EKU the SDK calls the certificate invalid). The CA's
private key is used once and thrown away: nothing can issue more certificates under it, and a new
identity is a new ``keys init``. Signatures are not time-stamped offline, so they stay valid only
while the certificate does: both certificates are long-lived on purpose.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from sdmark.core.errors import SdmarkError
from sdmark.plugins.c2pa.settings import CA_CERT, SIGNER_CHAIN, SIGNER_KEY

CA_YEARS = 30
SIGNER_YEARS = 25


@dataclass(frozen=True)
class Identity:
    """The files of a local identity: ``ca`` (share it: it is the trust anchor), ``chain`` and ``key``."""

    folder: Path
    ca: Path
    chain: Path
    key: Path


def identity_files(folder: Path) -> Identity:
    return Identity(folder, folder / CA_CERT, folder / SIGNER_CHAIN, folder / SIGNER_KEY)


def create_identity(folder: Path, name: str, organization: str | None = None, *, force: bool = False,
                    years: int = SIGNER_YEARS) -> Identity:
    """Write a new CA certificate, signer chain and 0600 private key (EC P-256) into ``folder``.

    Refuses to replace an existing identity unless ``force``: images signed with the old key would
    no longer match the key on disk, which is confusing rather than dangerous, but deliberate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    files = identity_files(folder)
    existing = [p for p in (files.ca, files.chain, files.key) if p.exists()]
    if existing and not force:
        raise SdmarkError(f"{folder} already holds a signing identity ({existing[0].name}); pass --force to replace it")
    if years < 1:
        raise SdmarkError(f"the certificate must be valid for at least 1 year; got {years}")

    def subject(common_name: str) -> x509.Name:
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        return x509.Name(attributes)

    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    start = now - dt.timedelta(minutes=5)  # small clock skew between machines
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = subject(f"{name} CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(now + dt.timedelta(days=365 * max(CA_YEARS, years + 1)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer_cert = (
        x509.CertificateBuilder()
        .subject_name(subject(name)).issuer_name(ca_name)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(files.key, signer_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        files.chain.write_bytes(signer_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
        files.ca.write_bytes(ca_cert.public_bytes(pem))
    except OSError as exc:
        raise SdmarkError(f"{folder}: cannot write the identity ({exc.strerror or exc})") from None
    return files


def _key_usage(cert_sign: bool):
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _write_private(path: Path, data: bytes) -> None:
    """Create the key file readable by its owner only, from the first byte (no chmod window)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def describe_certificate(path: Path) -> dict[str, str]:
    """Subject, issuer, validity and key type of the first certificate in a PEM file."""
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SdmarkError(f"{path}: not a readable PEM certificate ({exc})") from None
    cert = certs[0]
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key": type(cert.public_key()).__name__.removeprefix("_").replace("PublicKey", ""),
        "chain_length": str(len(certs)),
    }


def certificate_identity(path: Path) -> tuple[str | None, str | None]:
    """The common name and SHA-256 fingerprint (lower-case hex of the DER bytes) of the first
    certificate in a PEM file: what tells two identities with the same name apart."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
    except (OSError, ValueError, IndexError) as exc:
        raise SdmarkError(f"{path}: not a readable PEM certificate ({exc})") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (str(names[0].value) if names else None), cert.fingerprint(hashes.SHA256()).hex()
