"""Message signing: Celery's ``auth`` serializer, its key and certificates from the settings.

With ``CHECKOUT_SIGNING=on`` every process signs what it sends — task messages (saga
steps, compensations, the events the relay publishes), results, worker control messages
and monitoring events — with its private key, and accepts only messages whose signature
verifies against a certificate in its trusted store (``config.celery.celery_config`` sets
the ``auth`` serializer and accept lists). A message that is not signed, or signed by a
key the store does not know, or altered after signing, is refused before any task sees
it: the worker's consumer (``app/messaging/consumer.py``) dead-letters it.

This is what Celery's ``app.setup_security()`` does, with two differences: the key and
certificate may be given as PEM text (from the environment) as well as file paths, and
the process checks at start-up that its own signature verifies against the store — a
process whose certificate the others do not trust would otherwise send messages that
every worker refuses.

Signing authenticates; it does not encrypt. Use TLS to the broker for confidentiality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import ImproperlyConfigured
from kombu.serialization import disable_insecure_serializers, registry

from config.settings import Settings

#: Celery's name for the signing serializer (kombu content type ``application/data``).
SIGNED = "auth"

PEM_MARKER = "-----BEGIN "


def read_pem(value: str, variable: str) -> str:
    """The PEM text of a setting that holds either the PEM itself or a file's path."""
    if value.lstrip().startswith(PEM_MARKER):
        return value
    path = Path(value).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ImproperlyConfigured(f"{variable}: cannot read {path} ({exc.strerror or exc})") from None
    if PEM_MARKER not in text:
        raise ImproperlyConfigured(f"{variable}: {path} holds no PEM block")
    return text


def install(app: Celery, settings: Settings) -> None:
    """Make ``app`` sign what it sends and verify what it receives, if signing is on.

    Registers the ``auth`` serializer (process-wide, like ``app.setup_security()``: one
    process signs with one key). Raises ImproperlyConfigured naming the variable to fix.
    """
    if settings.signing != "on":
        return
    try:
        from celery.security.serialization import SecureSerializer, register_auth
    except ImproperlyConfigured as exc:  # cryptography is missing
        raise ImproperlyConfigured(f"CHECKOUT_SIGNING=on: {exc}") from None
    conf = app.conf
    if conf.task_serializer != SIGNED or list(conf.accept_content) != [SIGNED]:
        raise ImproperlyConfigured("CHECKOUT_SIGNING=on needs task_serializer='auth' and accept_content=['auth']")
    assert settings.signing_key is not None and settings.signing_cert and settings.signing_cert_store
    key = read_pem(settings.signing_key.get_secret_value(), "CHECKOUT_SIGNING_KEY")
    cert = read_pem(settings.signing_cert, "CHECKOUT_SIGNING_CERT")
    store = settings.signing_cert_store
    if not Path(store).expanduser().is_dir() and "*" not in store:
        raise ImproperlyConfigured(f"CHECKOUT_SIGNING_CERT_STORE: {store} is not a directory of certificates")
    password = settings.signing_key_password.get_secret_value() if settings.signing_key_password else None
    digest = conf.security_digest
    # As setup_security: no decoder but JSON's (and the auth serializer's) stays enabled.
    disable_insecure_serializers(["json"])
    try:
        register_auth(key, password, cert, str(Path(store).expanduser()), digest, "json")
        signer: Any = registry._encoders[SIGNED]  # kombu's registry: (content_type, encoding, encoder)
        serializer: SecureSerializer = signer.encoder.__self__
        probe = {"probe": "signing"}
        if serializer.deserialize(serializer.serialize(probe)) != probe:
            raise ValueError("the signed probe came back different")
    except Exception as exc:
        raise ImproperlyConfigured(
            f"CHECKOUT_SIGNING=on: this process could not sign a message that its own store verifies ({exc}). "
            "Check that CHECKOUT_SIGNING_KEY is the key of CHECKOUT_SIGNING_CERT, and that a copy of the "
            "certificate is in CHECKOUT_SIGNING_CERT_STORE (every process must trust every other's)."
        ) from None
