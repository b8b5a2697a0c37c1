"""How a session's dict becomes a stored payload, and back.

Out-of-process stores get bytes: ``SESSION_SERIALIZER`` (JSON by default, never pickle), a
marker byte saying how the rest is encoded, optional zlib compression, and
``STATEMODES_MAX_SESSION_SIZE``. A value that cannot be stored fails where it is set, naming the
key, not as a mystery at response time. Stores that keep live objects, as ASP.NET InProc does,
get ``OBJECTS``: no serialization at all.
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

__all__ = ["OBJECTS", "Codec", "ObjectCodec", "SerializingCodec", "codec_for", "codec_named"]

# Payload marker bytes: the first byte says how the rest is encoded, so STATEMODES_COMPRESSION
# can be switched on or off without breaking sessions already stored (ASP.NET cannot).
RAW = b"\x00"
ZLIB = b"\x01"
# Below this many bytes compression costs more than it saves.
COMPRESS_MIN_LENGTH = 256

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
        if conf.STATEMODES_COMPRESSION and len(raw) >= COMPRESS_MIN_LENGTH:
            payload = ZLIB + zlib.compress(raw)
        else:
            payload = RAW + raw
        limit = conf.STATEMODES_MAX_SESSION_SIZE
        if len(payload) > limit:
            raise SessionTooLarge(
                f"The session is {len(payload)} bytes serialized, more than "
                f"STATEMODES_MAX_SESSION_SIZE ({limit} bytes). Keys: {', '.join(map(repr, data))}."
            )
        return payload

    def decode(self, payload: Any) -> dict[str, Any]:
        if payload is None:
            return {}
        try:
            marker, body = payload[:1], payload[1:]
            if marker == ZLIB:
                body = zlib.decompress(body)
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
