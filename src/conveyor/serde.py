"""Codecs for task arguments and results.

msgpack is the default and cannot execute code when decoding. pickle
(cloudpickle when installed, for lambdas and closures) is opt-in for trusted
clusters only: anyone who can submit a pickled payload can run code on every
worker that decodes it. The master never decodes payloads at all.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

import msgpack  # type: ignore[import-untyped]

from .errors import SerializationError

MSGPACK = "msgpack"
PICKLE = "pickle"
CODECS = (MSGPACK, PICKLE)



def packb(obj: Any) -> bytes:
    """Encode with msgpack (bin type on, tuples become lists)."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpackb(data: bytes) -> Any:
    """Decode msgpack; int map keys allowed, no code execution possible."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _pickle_dumps(obj: Any) -> bytes:
    try:
        import cloudpickle
    except ImportError:  # plain pickle still handles module-level names
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data: bytes = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return data


def check_codec(codec: str) -> str:
    """Return ``codec`` if it is a known codec name, else raise ValueError."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}: choose one of {', '.join(CODECS)}")
    return codec


def encode(obj: Any, codec: str = MSGPACK) -> bytes:
    """Encode one value with ``codec``; raise SerializationError if it cannot be."""
    if codec == PICKLE:
        try:
            return _pickle_dumps(obj)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {type(obj).__name__}: {exc}") from exc
    try:
        return packb(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"a value of type {type(obj).__name__} cannot be encoded with msgpack ({exc}); "
            "pass plain data (None, bool, int, float, str, bytes, list, dict) "
            "or enable the pickle codec on a trusted network"
        ) from exc


def decode(data: bytes, codec: str = MSGPACK, *, allow_pickle: bool = False) -> Any:
    """Decode one value; pickle payloads are refused unless ``allow_pickle``."""
    if codec == PICKLE:
        if not allow_pickle:
            raise SerializationError(
                "refusing to unpickle a payload: the pickle codec is not enabled here"
            )
        return pickle.loads(data)
    return unpackb(data)


def encode_call(args: tuple[Any, ...], kwargs: dict[str, Any], codec: str = MSGPACK) -> bytes:
    """Encode a call's arguments, naming the argument that cannot be encoded."""
    try:
        return encode([list(args), kwargs], codec)
    except SerializationError as exc:
        for i, value in enumerate(args):
            try:
                encode(value, codec)
            except SerializationError as inner:
                raise SerializationError(f"argument {i} ({value!r:.60}): {inner}") from None
        for key, value in kwargs.items():
            try:
                encode(value, codec)
            except SerializationError as inner:
                raise SerializationError(f"argument {key!r} ({value!r:.60}): {inner}") from None
        raise exc


def decode_call(data: bytes, codec: str = MSGPACK, *, allow_pickle: bool = False) -> tuple[list[Any], dict[str, Any]]:
    """Decode arguments written by :func:`encode_call`."""
    value = decode(data, codec, allow_pickle=allow_pickle)
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], dict)):
        raise SerializationError("malformed call payload")
    return value[0], value[1]


def type_name(kind: type) -> str:
    """An exception type's name as errors carry it: ``ValueError``, ``pkg.mod.MyError``."""
    return kind.__qualname__ if kind.__module__ in ("builtins", None) else f"{kind.__module__}.{kind.__qualname__}"


def encode_error(exc: BaseException) -> bytes:
    """Describe an exception as a msgpack map (always msgpack: errors never carry code).

    ``mro`` lists the names of the exception's classes, so a worker can match
    ``retry_on`` against base classes without importing anything.
    """
    kind = type(exc)
    tb = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    error: dict[str, Any] = {"type": type_name(kind), "message": str(exc), "traceback": tb,
             "mro": [type_name(k) for k in kind.__mro__ if issubclass(k, BaseException)]}
    delay = getattr(exc, "delay", None)
    if isinstance(delay, (int, float)):
        error["delay"] = float(delay)
    return packb(error)


def decode_error(data: bytes) -> dict[str, Any]:
    """Read an error map written by :func:`encode_error` (tolerating junk)."""
    try:
        value = unpackb(data)
    except Exception:
        value = None
    if not isinstance(value, dict):
        return {"type": "conveyor.errors.ProtocolError", "message": "unreadable error payload", "traceback": ""}
    out: dict[str, Any] = {
        "type": str(value.get("type", "Exception")),
        "message": str(value.get("message", "")),
        "traceback": str(value.get("traceback", "")),
        "mro": [str(x) for x in value.get("mro", [])] if isinstance(value.get("mro"), list) else [],
    }
    if isinstance(value.get("delay"), (int, float)):
        out["delay"] = float(value["delay"])
    if isinstance(value.get("dependency"), str):
        out["dependency"] = value["dependency"]
    return out
