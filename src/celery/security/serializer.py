"""The ``auth`` serializer (see the package docstring for the format)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import glob
import os
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import load_pem_x509_certificate

from ..exceptions import DecodeError, SecurityError
from ..messaging import serialization as serializers

__all__ = ["Certificate", "PrivateKey", "SecureSerializer", "register_auth"]

#: Between the fields of a signed payload (upstream's; it never occurs in them).
SEPARATOR = b"\x00\x01"
CONTENT_TYPE = "application/data"


def _digest(name: str) -> hashes.HashAlgorithm:
    algorithm = getattr(hashes, str(name).upper(), None)
    if algorithm is None:
        raise SecurityError(f"Unknown security_digest {name!r} (sha256, sha512, ...)")
    return algorithm()


def _pss(digest: hashes.HashAlgorithm) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.MAX_LENGTH)


class Certificate:
    """An X.509 certificate with an RSA key, named by its issuer and serial number."""

    def __init__(self, pem: str | bytes) -> None:
        try:
            self._cert = load_pem_x509_certificate(
                pem.encode() if isinstance(pem, str) else pem)
        except ValueError as exc:
            raise SecurityError(f"Invalid certificate: {exc}") from None
        if not isinstance(self._cert.public_key(), rsa.RSAPublicKey):
            raise SecurityError("Invalid certificate: only RSA certificates are supported")

    def has_expired(self) -> bool:
        return dt.datetime.now(dt.UTC) >= self._cert.not_valid_after_utc

    @property
    def id(self) -> str:
        issuer = " ".join(str(attr.value) for attr in self._cert.issuer)
        return f"{issuer} {self._cert.serial_number}"

    def verify(self, data: bytes, signature: bytes, digest: hashes.HashAlgorithm) -> None:
        key = self._cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        try:
            key.verify(signature, data, _pss(digest), digest)
        except InvalidSignature:
            raise SecurityError(f"Bad signature: the message does not match its signature "
                                f"by {self.id!r}") from None


class PrivateKey:
    def __init__(self, pem: str | bytes, password: str | bytes | None = None) -> None:
        secret = password.encode() if isinstance(password, str) else password
        try:
            key = serialization.load_pem_private_key(
                pem.encode() if isinstance(pem, str) else pem, password=secret)
        except (ValueError, TypeError) as exc:
            raise SecurityError(f"Invalid private key: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SecurityError("Invalid private key: only RSA keys are supported")
        self._key = key

    def sign(self, data: bytes, digest: hashes.HashAlgorithm) -> bytes:
        return self._key.sign(data, _pss(digest), digest)


def load_store(path: str) -> dict[str, Certificate]:
    """The trusted certificates of a folder (each file one PEM certificate), a file or a
    glob, by id; an expired or duplicate one is refused, as upstream."""
    pattern = os.path.join(path, "*") if os.path.isdir(path) else path
    store: dict[str, Certificate] = {}
    for name in sorted(glob.glob(pattern)):
        with open(name, encoding="utf-8") as f:
            cert = Certificate(f.read())
        if cert.has_expired():
            raise SecurityError(f"Expired certificate: {cert.id!r} ({name})")
        if cert.id in store:
            raise SecurityError(f"Duplicate certificate: {cert.id!r} ({name})")
        store[cert.id] = cert
    if not store:
        raise SecurityError(f"No certificate in security_cert_store {path!r}")
    return store


class SecureSerializer:
    """Signs with ``key``/``cert``, verifies against ``store``. Immutable once made: any
    thread may use it."""

    def __init__(self, key: PrivateKey | None, cert: Certificate | None,
                 store: dict[str, Certificate] | None, digest: str = "sha256",
                 serializer: str = "json", allowed: Iterable[str] | None = None) -> None:
        self._key, self._cert, self._store = key, cert, store or {}
        self._digest = _digest(digest)
        self._serializer = serializer
        self._allowed = serializers.accept_set(allowed or [serializer])

    def serialize(self, data: Any) -> bytes:
        if self._key is None or self._cert is None:
            raise SecurityError("Cannot sign: no security_key/security_certificate")
        body, content_type, content_encoding = serializers.dumps(data, self._serializer)
        fields = [base64.b64encode(self._cert.id.encode()),
                  base64.b64encode(self._key.sign(body, self._digest)),
                  content_type.encode(), content_encoding.encode(), body]
        return base64.b64encode(SEPARATOR.join(fields))

    def deserialize(self, data: bytes) -> Any:
        try:
            parts = base64.b64decode(data, validate=False).split(SEPARATOR, 4)
            if len(parts) != 5:
                raise ValueError(f"{len(parts)} fields, not 5")
            signer = base64.b64decode(parts[0]).decode()
            signature = base64.b64decode(parts[1])
            content_type, content_encoding = parts[2].decode(), parts[3].decode()
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise DecodeError(f"Not a signed (auth) message: {exc}") from None
        cert = self._store.get(signer)
        if cert is None:
            raise SecurityError(f"Unknown certificate: {signer!r} is not in "
                                "security_cert_store")
        cert.verify(parts[4], signature, self._digest)
        return serializers.loads(parts[4], content_type, content_encoding, self._allowed)


def register_auth(key: str | None = None, key_password: str | bytes | None = None,
                  cert: str | None = None, store: str | None = None,
                  digest: str = "sha256", serializer: str = "json",
                  allowed: Iterable[str] | None = None) -> SecureSerializer:
    """Register the ``auth`` serializer (process-wide, as kombu's registry) and return it."""
    secure = SecureSerializer(PrivateKey(key, key_password) if key else None,
                              Certificate(cert) if cert else None,
                              load_store(store) if store else None, digest, serializer,
                              allowed)
    serializers.register(serializers.Serializer(
        "auth", CONTENT_TYPE, "utf-8", secure.serialize, secure.deserialize))
    return secure
