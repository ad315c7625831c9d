"""Message signing, as Celery's ``app.setup_security()`` and its ``auth`` serializer.

A signed message carries, base64-encoded, the signer's certificate id (its issuer's values
joined by spaces, a space, its serial number), an RSA-PSS signature (MGF1, the largest salt)
of the inner serialized body, the inner content type and encoding, and the body itself,
joined by ``\\x00\\x01``; its content type is ``application/data``. Upstream Celery signs
and verifies the same bytes, so signed messages go both ways. A worker with
``accept_content = ["auth"]`` refuses anything unsigned, signed by a certificate outside
its store, or whose signature does not match, with one line each (``SecurityError``).

Needs the ``cryptography`` package (the ``security`` extra); nothing else imports this.
"""

from __future__ import annotations

from typing import Any

from ..exceptions import ImproperlyConfigured

__all__ = ["setup_security"]


def setup_security(allowed_serializers: Any = None, key: str | None = None,
                   key_password: str | bytes | None = None, cert: str | None = None,
                   store: str | None = None, digest: str | None = None,
                   serializer: str = "json", app: Any = None) -> None:
    """Register the ``auth`` serializer: messages signed with the private key file ``key``
    (and its certificate file ``cert``), verified against the certificates in ``store`` (a
    folder, a file, or a glob). Each argument defaults to its ``security_*`` setting. The
    app must send with ``task_serializer = "auth"`` and accept only ``["auth"]``.

    ``allowed_serializers``: the serializers a signed body may be written with inside
    (default: ``serializer``); any other is refused on receipt.
    """
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ImproperlyConfigured("Message signing needs the cryptography package: pip "
                                   "install 'celery-asyncio[security]'") from None
    if app is None:
        from .._state import get_current_app

        app = get_current_app()
    conf = app.conf
    if conf.task_serializer != "auth" or list(conf.accept_content or ()) != ["auth"]:
        raise ImproperlyConfigured(
            "Message signing needs task_serializer = 'auth' and accept_content = ['auth'] "
            "(a worker that also accepts unsigned messages would gain nothing)")
    key = key or conf.security_key
    key_password = key_password or conf.security_key_password
    cert = cert or conf.security_certificate
    store = store or conf.security_cert_store
    digest = digest or conf.security_digest
    if not (key and cert and store):
        raise ImproperlyConfigured(
            "Message signing needs security_key, security_certificate and "
            "security_cert_store (files of the PEM key and certificate, and the folder or "
            "glob of trusted certificates)")
    from .serializer import register_auth

    with open(key, encoding="utf-8") as kf, open(cert, encoding="utf-8") as cf:
        register_auth(kf.read(), key_password, cf.read(), store, digest, serializer,
                      allowed_serializers)
