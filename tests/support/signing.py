"""Throwaway signing keys and certificates for the tests (``cryptography``, no openssl).

:func:`make_signer` writes an RSA key and a self-signed certificate under a directory and
returns their paths; :func:`signing_overrides` turns one into the settings that switch
message signing on (``CHECKOUT_SIGNING=on`` and friends), with a cert store holding the
certificates given. :func:`task_message` and :func:`publish` make and send a task message
as a forger would: unsigned, or signed with a key of their own.
"""

from __future__ import annotations

import datetime
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Signer:
    name: str
    key: Path
    cert: Path
    serial: int

    def key_pem(self) -> str:
        return self.key.read_text()

    def cert_pem(self) -> str:
        return self.cert.read_text()


def make_signer(directory: Path, name: str, *, serial: int | None = None, issuer: str | None = None) -> Signer:
    """A 2048-bit RSA key and a self-signed certificate valid for a day, as PEM files
    ``<name>.key`` and ``<name>.pem`` under ``directory``. ``serial`` and ``issuer`` let a
    forger's certificate claim another signer's identity (Celery identifies a signer by
    issuer and serial number)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or f"checkout {name}")])
    now = datetime.datetime.now(datetime.UTC)
    number = serial if serial is not None else x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(number)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Signer(name, key_path, cert_path, number)


def cert_store(directory: Path, *signers: Signer) -> Path:
    """A directory holding a copy of each signer's certificate: the trusted store."""
    directory.mkdir(parents=True, exist_ok=True)
    for signer in signers:
        shutil.copy(signer.cert, directory / signer.cert.name)
    return directory


def signing_overrides(signer: Signer, store: Path) -> dict[str, Any]:
    """Settings (by field name) that sign with ``signer`` and trust the certificates in ``store``."""
    return {
        "signing": "on",
        "signing_key": str(signer.key),
        "signing_cert": str(signer.cert),
        "signing_cert_store": str(store),
    }


# --- messages as a forger would send them ------------------------------------------------


@dataclass(frozen=True)
class RawMessage:
    task_id: str
    body: bytes
    headers: dict[str, Any]
    content_type: str


def task_message(app: Any, task: str, argument: dict[str, Any], signer: Signer | None = None) -> RawMessage:
    """A genuine Celery protocol-2 message for ``task`` with its one argument: unsigned JSON
    (``signer`` None), or signed with ``signer``'s key the way Celery's auth serializer does."""
    from celery.security.certificate import Certificate
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    task_id = str(uuid.uuid4())
    message = app.amqp.as_task_v2(task_id, task, args=(argument,), kwargs={})
    if signer is None:
        return RawMessage(task_id, json.dumps(message.body).encode(), message.headers, "application/json")
    serializer = SecureSerializer(
        PrivateKey(signer.key_pem()), Certificate(signer.cert_pem()), None, "sha256", serializer="json"
    )
    return RawMessage(task_id, serializer.serialize(message.body), message.headers, "application/data")


def publish(app: Any, message: RawMessage, routing_key: str) -> None:
    """Straight onto the system's exchange, as a foreign producer would: no Celery."""
    from kombu import Producer

    from config.celery import EXCHANGE

    with app.connection_for_write() as conn:
        Producer(conn.default_channel).publish(
            message.body,
            exchange=EXCHANGE,
            routing_key=routing_key,
            headers=message.headers,
            content_type=message.content_type,
            content_encoding="utf-8",
            declare=[EXCHANGE],
            retry=True,
        )
