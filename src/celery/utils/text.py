"""Text helpers: URL masking and pluralizing for messages shown to people."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["mask_url", "pluralize"]


def mask_url(url: str | None) -> str:
    """``url`` with its password replaced by ``**`` (safe to print or log).

    ``redis://:secret@host:6379/0`` becomes ``redis://:**@host:6379/0``. Several URLs
    separated by ``;`` (failover lists) are masked one by one. Strings that are not URLs
    are returned unchanged; ``None`` becomes ``""``.
    """
    if not url:
        return ""
    if ";" in url:
        return ";".join(mask_url(part) for part in url.split(";"))
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Unparsable (e.g. a bad port): hide everything between the scheme and the host.
        scheme, _, rest = url.partition("://")
        if "@" not in rest:
            return url
        return f"{scheme}://**@{rest.rpartition('@')[2]}"
    if password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:**@{hostinfo}"))


def pluralize(n: int, singular: str, plural: str | None = None) -> str:
    """``singular`` when ``n == 1``, else ``plural`` (default: ``singular + "s"``)."""
    return singular if n == 1 else (plural or singular + "s")
