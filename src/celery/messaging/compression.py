"""Message body compression as kombu does it: the serialized body is compressed and the
``compression`` header names the method by its content type, so an upstream Celery worker
decompresses ours and we theirs.

=================  ==========================  ======================================
name(s)            header                      needs
=================  ==========================  ======================================
zlib, gzip         ``application/x-gzip``      (zlib's format under both names, as kombu)
bzip2, bzip        ``application/x-bz2``
lzma, xz           ``application/x-lzma``
brotli             ``application/x-brotli``    the ``brotli`` package
zstd, zstandard    ``application/zstd``        Python 3.14, ``backports.zstd`` or ``zstandard``
=================  ==========================  ======================================

A body never decompresses to more than ``limits.MAX_BYTES``: the rest is not produced
(zlib, bz2, lzma and zstd stop there), so a small message cannot become gigabytes in the
worker (``DecodeError``). Pure functions; any thread.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import Any

from ..exceptions import DecodeError, ImproperlyConfigured
from . import limits

__all__ = ["compress", "decompress", "methods"]

#: content type -> (compress, decompress(data, limit)); what this interpreter can do.
_METHODS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes, int], bytes]]] = {}
#: name -> content type.
_ALIASES: dict[str, str] = {}


def _register(content_type: str, names: tuple[str, ...], encode: Callable[[bytes], bytes],
              decode: Callable[[bytes, int], bytes]) -> None:
    _METHODS[content_type] = (encode, decode)
    _ALIASES.update(dict.fromkeys(names, content_type))
    _ALIASES[content_type] = content_type


def _stream(make: Callable[[], Any]) -> Callable[[bytes, int], bytes]:
    """A bounded decompressor from a ``decompress(data, max_length)`` object."""
    def decode(data: bytes, limit: int) -> bytes:
        decoder = make()
        out = decoder.decompress(data, limit + 1)
        if len(out) > limit:
            raise DecodeError(f"compressed message body is larger than {limit} bytes "
                              "once decompressed")
        if not decoder.eof:
            raise ValueError("it ends before its compressed stream does")
        return out
    return decode


def _zlib(data: bytes, limit: int) -> bytes:
    decoder = zlib.decompressobj()
    out = decoder.decompress(data, limit + 1)
    if len(out) > limit:
        raise DecodeError(f"compressed message body is larger than {limit} bytes once "
                          "decompressed")
    out += decoder.flush()
    if not decoder.eof:
        raise ValueError("it ends before its compressed stream does")
    return out


_register("application/x-gzip", ("gzip", "zlib"), zlib.compress, _zlib)
_register("application/x-bz2", ("bzip2", "bzip"), bz2.compress, _stream(bz2.BZ2Decompressor))
_register("application/x-lzma", ("lzma", "xz"), lzma.compress, _stream(lzma.LZMADecompressor))

try:
    import brotli  # type: ignore[import-not-found]
except ImportError:
    pass
else:
    def _brotli(data: bytes, limit: int) -> bytes:
        out = brotli.decompress(data)  # (no bounded API: checked after)
        if len(out) > limit:
            raise DecodeError(f"compressed message body is larger than {limit} bytes once "
                              "decompressed")
        return bytes(out)

    _register("application/x-brotli", ("brotli",), brotli.compress, _brotli)

try:
    try:
        from compression import zstd as _zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd as _zstd  # type: ignore[import-not-found,no-redef]
except ImportError:
    try:
        import zstandard as _zstandard  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        def _zstandard_decode(data: bytes, limit: int) -> bytes:
            reader = _zstandard.ZstdDecompressor().decompressobj()
            out = reader.decompress(data)
            if len(out) > limit:
                raise DecodeError(f"compressed message body is larger than {limit} bytes "
                                  "once decompressed")
            return bytes(out)

        _register("application/zstd", ("zstd", "zstandard"), _zstandard.compress,
                  _zstandard_decode)
else:
    _register("application/zstd", ("zstd", "zstandard"), _zstd.compress,
              _stream(_zstd.ZstdDecompressor))


def methods() -> list[str]:
    """The names and content types this interpreter compresses with."""
    return sorted(_ALIASES)


def compress(body: bytes, method: str) -> tuple[bytes, str]:
    """``(compressed body, content type for the compression header)``.

    Raises:
        ImproperlyConfigured: an unknown method, or one whose package is not installed.
    """
    content_type = _ALIASES.get(method.lower() if isinstance(method, str) else method)
    if content_type is None:
        raise ImproperlyConfigured(
            f"Unknown compression {method!r}: use one of {', '.join(methods())} (brotli and "
            "zstd need their packages)")
    return _METHODS[content_type][0](body), content_type


def decompress(body: bytes, content_type: str, limit: int | None = None) -> bytes:
    """The body a ``compression`` header of ``content_type`` says was compressed, at most
    ``limit`` bytes (default ``limits.MAX_BYTES``).

    Raises:
        DecodeError: an unknown method, a corrupt body, or more than ``limit`` bytes.
    """
    method = _METHODS.get(_ALIASES.get(content_type, content_type)) \
        if isinstance(content_type, str) else None
    if method is None:
        raise DecodeError(f"message compressed with {content_type!r}, which this worker "
                          f"cannot decompress (it can: {', '.join(sorted(_METHODS))})")
    try:
        return method[1](body, limits.MAX_BYTES if limit is None else limit)
    except DecodeError:
        raise
    except Exception as exc:  # zlib.error, OSError, LZMAError, ...: a corrupt body
        raise DecodeError(f"compressed message body ({content_type}) is corrupt: {exc}") \
            from None
