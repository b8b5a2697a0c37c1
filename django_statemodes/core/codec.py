"""How a session's dict becomes a stored payload, and back.

Out-of-process stores get bytes: ``SESSION_SERIALIZER`` (JSON by default, never pickle), a
marker byte saying how the rest is encoded, optional zlib compression, and
``STATEMODES_MAX_SESSION_SIZE``. A value that cannot be stored fails where it is set, naming the
key, not as a mystery at response time. Stores that keep live objects, as ASP.NET InProc does,
get ``OBJECTS``: no serialization at all.

The size limit bounds the serialized form, before compression, both ways: ``encode`` refuses a
larger session, and ``decode`` stops inflating a payload as soon as it passes the limit (whoever
can write to the store could plant a 1 MB payload that inflates to gigabytes in every worker).
"""

from __future__ import annotations

import json
import logging
import zlib
from typing import Any, Protocol

from django.core.signing import JSONSerializer
from django.utils.module_loading import import_string

from django_statemodes.conf import conf
from django_statemodes.exceptions import SessionTooLarge, SessionValueError

__all__ = [
    "OBJECTS",
    "UNENCODABLE",
    "Codec",
    "ObjectCodec",
    "SerializingCodec",
    "codec_for",
    "codec_named",
]

#: What ``encode()`` raises for data the store cannot hold: a value the serializer refuses (named
#: by ``check_value`` where it can, else the serializer's own error) or a session over the size
#: limit. Code that moves sessions between stores skips such a session instead of failing.
UNENCODABLE: tuple[type[Exception], ...] = (
    SessionValueError,
    SessionTooLarge,
    TypeError,
    ValueError,
)

# Payload marker bytes: the first byte says how the rest is encoded, so STATEMODES_COMPRESSION
# can be switched on or off without breaking sessions already stored (ASP.NET cannot).
RAW = b"\x00"
ZLIB = b"\x01"
# Below this many bytes compression costs more than it saves.
COMPRESS_MIN_LENGTH = 256
# Most bytes one inflate call may produce. zlib builds each call's output in blocks and then
# copies them into one bytes object, so a call briefly holds twice its output: small steps keep
# a planted payload's memory near the size limit, not twice it.
INFLATE_STEP = 256 * 1024

# Django's default SESSION_SERIALIZER is json.dumps(obj, separators=(",", ":")).encode("latin-1")
# and json.loads(data.decode("latin-1")), building a JSONEncoder on every call. These pre-built
# coders produce the same bytes and data; they are used only while that serializer is configured
# (under any name: django.contrib.sessions.serializers re-exports django.core.signing's).
_json_encode = json.JSONEncoder(separators=(",", ":")).encode
_json_decoder = json.JSONDecoder()
_json_scan = _json_decoder.scan_once  # type: ignore[attr-defined]
# Values whose JSON form exists always and is at most this many bytes per character of text
# (ensure_ascii writes a character outside the BMP as two 6-byte escapes).
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})
_JSON_BYTES_PER_CHAR = 12


class Codec(Protocol):
    """Turns a session's dict into what its provider stores, and back."""

    #: False where ``check_value`` never refuses anything, so callers may skip it.
    checks_values: bool

    def check_value(self, key: str, value: Any) -> None:
        """Raise ``SessionValueError`` or ``SessionTooLarge`` if ``value`` cannot be stored."""

    def encode(self, data: dict[str, Any]) -> Any:
        """Return the payload to store for ``data``."""

    def decode(self, payload: Any) -> dict[str, Any]:
        """Return the session dict of a stored payload; ``{}`` for None or corrupt data."""


class ObjectCodec:
    """Live objects, kept as they are (ASP.NET InProc): nothing to check or serialize."""

    checks_values = False

    def check_value(self, key: str, value: Any) -> None:
        return None

    def encode(self, data: dict[str, Any]) -> dict[str, Any]:
        return dict(data)  # a copy, so an unsaved request changes nothing stored

    def decode(self, payload: Any) -> dict[str, Any]:
        return {} if payload is None else dict(payload)


OBJECTS = ObjectCodec()


class SerializingCodec:
    """Bytes through ``serializer`` (a Django session serializer class, built per use).

    ``serializer=None`` means Django's own ``JSONSerializer``, through the pre-built coders.
    """

    checks_values = True

    def __init__(self, serializer: Any = None, name: str = "") -> None:
        self.serializer = serializer
        #: The serializer's dotted path, named in errors (``SESSION_SERIALIZER``).
        self.name = name

    def dumps(self, data: Any) -> bytes:
        if self.serializer is None:
            return _json_encode(data).encode("latin-1")
        return self.serializer().dumps(data)  # type: ignore[no-any-return]

    def loads(self, data: bytes) -> Any:
        if self.serializer is None:
            return _json_loads(data.decode("latin-1"))
        return self.serializer().loads(data)

    def check_value(self, key: str, value: Any) -> None:
        if self._plain_fits(key, value):
            return  # JSON always takes it, within the size limit: nothing to serialize
        try:
            size = len(self.dumps({key: value}))
        except Exception as exc:
            raise SessionValueError(
                f"The session value for {key!r} cannot be stored: {type(value).__name__} is not "
                f"serializable by {self.name} ({exc}). Store plain data "
                "(str, int, float, bool, None, list, dict) or change SESSION_SERIALIZER."
            ) from exc
        limit = conf.STATEMODES_MAX_SESSION_SIZE
        if size > limit:
            raise SessionTooLarge(
                f"The session value for {key!r} is {size} bytes serialized, more than "
                f"STATEMODES_MAX_SESSION_SIZE ({limit} bytes)."
            )

    def _plain_fits(self, key: Any, value: Any) -> bool:
        """Say whether Django's JSON serializer surely stores ``{key: value}`` within the limit."""
        kind = type(value)
        if type(key) is not str or kind not in _PLAIN_TYPES or self.serializer is not None:
            return False
        if kind is int and not -(1 << 63) <= value < 1 << 64:
            return False  # huge ints can be over sys.get_int_max_str_digits()
        length = len(key) + (len(value) if kind is str else 32)
        return length * _JSON_BYTES_PER_CHAR + 8 <= conf.STATEMODES_MAX_SESSION_SIZE

    def encode(self, data: dict[str, Any]) -> bytes:
        try:
            raw = self.dumps(data)
        except Exception:
            for key, value in data.items():  # name the offending key
                self.check_value(key, value)
            raise
        # Checked before compression: the limit bounds what every load inflates and parses,
        # not only what the store keeps (180 MB of JSON compresses to a few hundred KB).
        if len(raw) > conf.STATEMODES_MAX_SESSION_SIZE:
            raise self._too_large(data, len(raw))
        if conf.STATEMODES_COMPRESSION and len(raw) >= COMPRESS_MIN_LENGTH:
            return ZLIB + zlib.compress(raw)
        return RAW + raw

    def _too_large(self, data: dict[str, Any], size: int) -> SessionTooLarge:
        """Return the error for a session of ``size`` bytes, naming the values that fill it."""
        # Only on this error path is each value serialized on its own: a value grown in place
        # (session["cart"].append(...)) was never measured where it was set.
        sizes: dict[str, int] = {}
        for key, value in data.items():
            try:
                sizes[key] = len(self.dumps({key: value}))
            except Exception:
                sizes[key] = 0
        largest = sorted(sizes, key=sizes.__getitem__, reverse=True)
        named = [key for key in largest[:5] if sizes[key] * 10 >= size] or largest[:5]
        values = ", ".join(f"{key!r} ({sizes[key]} bytes)" for key in named)
        return SessionTooLarge(
            f"The session is {size} bytes serialized, more than STATEMODES_MAX_SESSION_SIZE "
            f"({conf.STATEMODES_MAX_SESSION_SIZE} bytes), compressed or not. "
            f"Largest values: {values}."
        )

    def decode(self, payload: Any) -> dict[str, Any]:
        if payload is None:
            return {}
        try:
            marker, body = payload[:1], payload[1:]
            if marker == ZLIB:
                # Inflated whether STATEMODES_COMPRESSION is on or not (the marker, not the
                # setting, says how a payload is encoded, so switching it off loses no session),
                # and bounded, since whoever writes to the store chooses what it inflates to.
                body = _inflate(body, conf.STATEMODES_MAX_SESSION_SIZE)
            elif marker != RAW:
                raise ValueError(f"unknown payload marker {marker!r}")
            data = self.loads(body)
            if not isinstance(data, dict):
                raise ValueError("payload is not a dict")
            return data
        except Exception as exc:
            # Django's decode(): corrupt data is logged to the security logger, never served.
            security = logging.getLogger("django.security.SuspiciousSession")
            security.warning("Session data corrupted: %s", exc)
            return {}


def _inflate(body: Any, limit: int) -> bytes:
    """``zlib.decompress(body)``, raising ``ValueError`` once the output passes ``limit`` bytes.

    Memory stays near ``limit`` + ``INFLATE_STEP`` whatever the payload claims: output is made
    a step at a time and the first step past the limit ends it.
    """
    inflater = zlib.decompressobj()
    first = inflater.decompress(body, min(INFLATE_STEP, limit + 1))
    if inflater.eof and len(first) <= limit:
        return first  # nearly every compressed session: one call, no copy
    # Steps are kept apart and joined once at the end: a growing bytearray would over-allocate
    # and copy as it grows.
    steps = [first]
    size = len(first)
    while size <= limit and not inflater.eof:
        step = inflater.decompress(inflater.unconsumed_tail, min(INFLATE_STEP, limit + 1 - size))
        if not step:
            raise ValueError("compressed payload is truncated")
        steps.append(step)
        size += len(step)
    if size > limit:
        raise ValueError(
            f"compressed payload inflates to more than STATEMODES_MAX_SESSION_SIZE ({limit} bytes)"
        )
    return b"".join(steps)


_codecs: dict[tuple[Any, str], SerializingCodec] = {}


def codec_for(serializer: Any, name: str) -> SerializingCodec:
    """Return the (cached) codec for the serializer class ``serializer``, named ``name``."""
    codec = _codecs.get((serializer, name))
    if codec is None:
        fast = None if serializer is JSONSerializer else serializer
        codec = _codecs[serializer, name] = SerializingCodec(fast, name)
    return codec


def _json_loads(text: str) -> Any:
    """``json.loads(text)`` for a payload the core wrote: one scan, no whitespace regex."""
    try:
        data, end = _json_scan(text, 0)
    except StopIteration:
        end = -1
    if end != len(text):  # leading or trailing text: json.loads decides (and names the error)
        return _json_decoder.decode(text)
    return data


_named: dict[str, SerializingCodec] = {}


def codec_named(path: str) -> SerializingCodec:
    """Return the codec of the serializer at the dotted ``path`` (``SESSION_SERIALIZER``)."""
    codec = _named.get(path)
    if codec is None:
        codec = _named[path] = codec_for(import_string(path), path)
    return codec
