"""Credentials out of URLs and messages, before they reach a log, a status or an Event.

One helper for the worker and the operator both: the worker redacts what it logs and
serves on ``/status``, and the operator redacts again whatever it copies from there
into a LiveStream's status and Events (a worker of another version may not have).

What counts as a credential in a URL:

- the userinfo password (``rtsp://user:pass@host``); a userinfo without a password is
  masked whole, as services pass a token as the bare user (``https://<token>@host``);
- every query value (``?token=``, ``?key=``, ``?sig=``, SRT's ``?passphrase=`` and
  ``?streamid=``), and a query item without a value; the names stay, they say what
  was passed;
- the fragment;
- nothing of a ``file://`` URL;
- for RTMP, the last path segment after the app: the stream key
  (``rtmp://host/app/<key>``).

NB: a userinfo ends at the *last* ``@`` of the URL, even one after ``/``, ``?`` or
``#``. RFC 3986 wants those characters percent-encoded in a password, but people paste
them as they are; this reading may mask more than a credential (an ``@`` in a query
value) and never less.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"

#: Schemes whose last path segment (after the app) is the stream key.
RTMP_SCHEMES = frozenset({"rtmp", "rtmps", "rtmpt", "rtmpts", "rtmpe", "rtmpte"})

#: A URL inside free text: a scheme, ``://``, then anything up to a space or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s\"'<>`]*")
#: Punctuation that ends a sentence or wraps a URL, not part of it.
_TRAILING = ").,;:!]}"

#: Known secrets shorter than this are not replaced wherever they occur in text: "1"
#: or "tcp" (``?rtsp_transport=tcp``) would garble every line. In a URL they are
#: masked all the same.
MIN_SECRET_LENGTH = 6


def url(value: str) -> str:
    """``value`` with its credentials masked; a URL without any comes back unchanged."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() == "file":
        return value  # NB: a file has no credentials, and "@" is common in file names
    userinfo = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
    rest, hash_, _ = rest.partition("#")
    rest, question, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        # NB: a user beside a password is an identity; alone, it is often the token.
        authority = f"{user}:{MASK}@{authority}" if colon and user else f"{MASK}@{authority}"
    if scheme.lower() in RTMP_SCHEMES:
        segments = path.split("/")
        if len(segments) >= 2 and segments[-1]:
            path = "/".join([*segments[:-1], MASK])
    out = f"{scheme}://{authority}{slash}{path}"
    if question:
        out += "?" + "&".join(_mask_item(item) for item in query.split("&"))
    if hash_:
        out += "#" + MASK
    return out


def _mask_item(item: str) -> str:
    name, equals, _ = item.partition("=")
    if not item:
        return item
    return f"{name}={MASK}" if equals else MASK


def secrets_of(value: str) -> set[str]:
    """The credential parts of a URL, as written and percent-decoded.

    For scrubbing them wherever they turn up whole, outside any URL shape (an error
    that quotes only the password, a log line of a library). Parts shorter than
    ``MIN_SECRET_LENGTH`` are left out (see there).
    """
    found: set[str] = set()
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() == "file":
        return found
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user, colon, password = userinfo.partition(":")
        found.add(password if colon and user else userinfo)
    rest, _, fragment = rest.partition("#")
    found.add(fragment)
    rest, _, query = rest.partition("?")
    for item in query.split("&"):
        name, equals, item_value = item.partition("=")
        found.add(item_value if equals else name)
    if scheme.lower() in RTMP_SCHEMES:
        segments = rest.partition("/")[2].split("/")
        if len(segments) >= 2:
            found.add(segments[-1])
    decoded = {unquote(s) for s in found} | {unquote(s.replace("+", " ")) for s in found}
    return {s for s in found | decoded if len(s) >= MIN_SECRET_LENGTH}


def text(value: str, *, secrets: Iterable[str] = ()) -> str:
    """Free text with every URL in it masked (``url``), and every known secret too."""
    value = _URL_IN_TEXT.sub(_masked_match, value)
    # Longest first: a secret that contains another is replaced whole.
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len)[::-1]:
        value = value.replace(secret, MASK)
    return value


def _masked_match(match: re.Match[str]) -> str:
    found = match.group(0)
    kept = found.rstrip(_TRAILING)
    # A closing bracket of an IPv6 host with no path after it belongs to the URL.
    while kept.count("[") > kept.count("]") and len(kept) < len(found):
        kept = found[: len(kept) + 1]
    return url(kept) + found[len(kept) :]
