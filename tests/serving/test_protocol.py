"""The wire format: numpy arrays round-trip exactly; nothing but plain data is ever decoded."""

import pickle

import msgpack
import numpy as np
import pytest

from mode_policy.errors import DataError
from mode_policy.serving.protocol import NDARRAY_EXT, pack, unpack


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int16", "int32", "int64", "float16", "float32", "float64"])
def test_arrays_round_trip_exactly(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
    out = unpack(pack({"x": array, "nested": {"list": [array[0], "text", 3, None]}}))
    assert out["x"].dtype == array.dtype and out["x"].shape == array.shape and np.array_equal(out["x"], array)
    assert np.array_equal(out["nested"]["list"][0], array[0]) and out["nested"]["list"][1:] == ["text", 3, None]


def test_non_contiguous_and_big_endian_arrays_are_sent_as_their_values():
    array = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    out = unpack(pack({"x": array}))["x"]
    assert out.dtype == np.dtype("<f4") and np.array_equal(out, array)


def test_objects_cannot_be_sent():
    with pytest.raises(TypeError, match="dtype object"):
        pack({"x": np.array([object()], dtype=object)})
    with pytest.raises(TypeError, match="cannot send a set"):
        pack({"x": {1, 2}})


def test_pickle_and_garbage_are_refused_not_executed():
    with pytest.raises(DataError, match="not a msgpack message|must be a msgpack map"):
        unpack(pickle.dumps({"obs": np.zeros(3)}))
    with pytest.raises(DataError, match="not a msgpack message"):
        unpack(b"\xc1\xff\x00garbage")
    with pytest.raises(DataError, match="text frame"):
        unpack('{"type": "predict"}')
    with pytest.raises(DataError, match="must be a msgpack map"):
        unpack(msgpack.packb([1, 2]))


def test_malformed_arrays_are_refused():
    def ext(code, payload):
        return msgpack.packb({"x": msgpack.ExtType(code, msgpack.packb(payload, use_bin_type=True))})

    with pytest.raises(DataError, match="unknown msgpack extension type 7"):
        unpack(ext(7, ["<f4", [1], b"\0" * 4]))
    with pytest.raises(DataError, match="dtype '\\|O' is not allowed"):
        unpack(ext(NDARRAY_EXT, ["|O", [1], b"\0" * 8]))
    with pytest.raises(DataError, match="does not match dtype <f4 and shape \\[2\\]"):
        unpack(ext(NDARRAY_EXT, ["<f4", [2], b"\0" * 4]))
    with pytest.raises(DataError, match="malformed array shape"):
        unpack(ext(NDARRAY_EXT, ["<f4", [-1], b""]))
