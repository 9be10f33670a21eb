"""Wire format of the policy server: msgpack messages with numpy arrays, no pickle.

Every websocket message is one binary msgpack map. Arrays travel as msgpack
extension type :data:`NDARRAY_EXT` whose payload is the msgpack list
``[dtype, shape, raw bytes]``: ``dtype`` a numpy dtype string from
:data:`WIRE_DTYPES` (little-endian, plain numbers only, so decoding never
constructs objects), the bytes C-contiguous. Anything else in a message is a
plain msgpack value (maps, lists, strings, numbers, booleans, nil).

Messages (``id`` is the client's request number, echoed back):

* server -> client on connect: ``{"type": "metadata", "protocol": 1, "policy": {...}, "features": {...}}``
* ``{"type": "predict", "id": n, "obs": {key: array | [str, ...]}}`` ->
  ``{"type": "result", "id": n, "ok": true, "actions": (B, H, A) float32,
  "latency_ms": {"server", "queue", "compute"}, "batch_size": rows in the forward}``
* ``{"type": "health", "id": n}`` -> ``{"type": "health", "id": n, "ok": true, ...}``
* any failure -> ``{"type": "error", "id": n or nil, "ok": false, "error": "what was wrong"}``

An HTTP ``GET /healthz`` on the same port answers too (for probes that speak no websocket).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from ..errors import DataError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 2**20
"""Largest message either side accepts (camera images included)."""
NDARRAY_EXT = 1
WIRE_DTYPES = frozenset(
    np.dtype(t).str
    for t in ("bool", "uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64")
)
"""The array dtypes the wire carries (numpy ``dtype.str``, little-endian)."""


def _encode_default(value: Any) -> msgpack.ExtType:
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"cannot send a {type(value).__name__} (send numpy arrays, numbers, strings, lists, maps)")
    array = np.ascontiguousarray(value)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype.str not in WIRE_DTYPES:
        raise TypeError(f"array dtype {array.dtype} cannot go on the wire (allowed: {sorted(WIRE_DTYPES)})")
    payload = [dtype.str, list(array.shape), array.astype(dtype, copy=False).tobytes()]
    return msgpack.ExtType(NDARRAY_EXT, msgpack.packb(payload, use_bin_type=True))


def _decode_ext(code: int, data: bytes) -> Any:
    if code != NDARRAY_EXT:
        raise DataError(f"unknown msgpack extension type {code} (only numpy arrays, type {NDARRAY_EXT})")
    try:
        dtype, shape, raw = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as err:
        raise DataError(f"malformed array payload ({err})") from None
    if dtype not in WIRE_DTYPES:
        raise DataError(f"array dtype {dtype!r} is not allowed on the wire")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise DataError(f"malformed array shape {shape!r}")
    if not isinstance(raw, bytes) or len(raw) != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
        raise DataError(f"array payload does not match dtype {dtype} and shape {shape}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def pack(message: dict[str, Any]) -> bytes:
    """One message -> bytes (TypeError for a value the wire cannot carry)."""
    return msgpack.packb(message, default=_encode_default, use_bin_type=True)


def unpack(data: bytes | str) -> dict[str, Any]:
    """Bytes -> one message; DataError naming what is malformed (never executes anything)."""
    if isinstance(data, str):
        raise DataError("text frame received: messages are binary msgpack maps")
    try:
        message = msgpack.unpackb(data, ext_hook=_decode_ext, raw=False, strict_map_key=True)
    except DataError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise DataError(f"not a msgpack message ({str(err) or type(err).__name__})") from None
    if not isinstance(message, dict):
        raise DataError(f"a message must be a msgpack map, got {type(message).__name__}")
    return message


def error_reply(request_id: Any, error: str) -> dict[str, Any]:
    return {"type": "error", "id": request_id, "ok": False, "error": error}
