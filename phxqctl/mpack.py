"""A small msgpack encoder and decoder on the standard library alone.

Why not msgspec: importing it (with typing_extensions and inspect) costs phxqctl more start-up
time than everything else a `phxqctl status` does. This codec covers what the protocol uses
(nil, bool, int, float, str, bin, array, map, in every size) and produces exactly the bytes
msgspec.msgpack.encode produces for the same values, and decodes to exactly what
msgspec.msgpack.decode returns; tests/test_wire.py checks both with hypothesis, so there is
still one definition of the protocol: the msgspec Structs of phxqd/protocol.py.

Ext types (timestamps...) are not supported: neither side of phxq sends them.
"""

from __future__ import annotations

import struct

#: typing costs a few ms to import; the annotations are strings (PEP 563) anyway
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


_B = struct.Struct(">B")
_H = struct.Struct(">H")
_I = struct.Struct(">I")
_Q = struct.Struct(">Q")
_b = struct.Struct(">b")
_h = struct.Struct(">h")
_i = struct.Struct(">i")
_q = struct.Struct(">q")
_f = struct.Struct(">f")
_d = struct.Struct(">d")


class DecodeError(ValueError):
    """The bytes are not one whole msgpack value of the supported types."""


# ------------------------------------------------------------------ encoding


def packb(obj: Any) -> bytes:
    """Encode one value; TypeError for a type msgpack (as used here) has no form for,
    OverflowError for an int outside [-2**63, 2**64 - 1], like msgspec."""
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack(obj: Any, out: bytearray) -> None:
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        _pack_int(obj, out)
    elif isinstance(obj, float):
        out.append(0xCB)
        out += _d.pack(obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        _pack_header(len(data), out, fix=(0xA0, 32), sized=(0xD9, 0xDA, 0xDB))
        out += data
    elif isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        _pack_header(len(data), out, fix=None, sized=(0xC4, 0xC5, 0xC6))
        out += data
    elif isinstance(obj, list | tuple):
        _pack_header(len(obj), out, fix=(0x90, 16), sized=(None, 0xDC, 0xDD))
        for item in obj:
            _pack(item, out)
    elif isinstance(obj, dict):
        _pack_header(len(obj), out, fix=(0x80, 16), sized=(None, 0xDE, 0xDF))
        for key, value in obj.items():
            _pack(key, out)
            _pack(value, out)
    else:
        raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


def _pack_int(n: int, out: bytearray) -> None:
    """The smallest form, unsigned forms for every n >= 0 (as msgspec does)."""
    if 0 <= n < 0x80 or -32 <= n < 0:
        out += _b.pack(n) if n < 0 else _B.pack(n)
    elif n >= 0:
        for limit, tag, fmt in ((0x100, 0xCC, _B), (0x10000, 0xCD, _H), (2**32, 0xCE, _I)):
            if n < limit:
                out.append(tag)
                out += fmt.pack(n)
                return
        if n >= 2**64:
            raise OverflowError("can't serialize ints < -2**63 or > 2**64 - 1")
        out.append(0xCF)
        out += _Q.pack(n)
    else:
        for limit, tag, fmt in ((-0x80, 0xD0, _b), (-0x8000, 0xD1, _h), (-(2**31), 0xD2, _i)):
            if n >= limit:
                out.append(tag)
                out += fmt.pack(n)
                return
        if n < -(2**63):
            raise OverflowError("can't serialize ints < -2**63 or > 2**64 - 1")
        out.append(0xD3)
        out += _q.pack(n)


def _pack_header(
    n: int,
    out: bytearray,
    fix: tuple[int, int] | None,
    sized: tuple[int | None, int, int],
) -> None:
    """The length header of a str, bin, array or map: a fix form when n is below its
    limit, else the 8-bit (if the type has one), 16-bit or 32-bit length form."""
    if fix is not None and n < fix[1]:
        out.append(fix[0] | n)
    elif sized[0] is not None and n < 0x100:
        out.append(sized[0])
        out.append(n)
    elif n < 0x10000:
        out.append(sized[1])
        out += _H.pack(n)
    elif n < 2**32:
        out.append(sized[2])
        out += _I.pack(n)
    else:
        raise ValueError("msgpack cannot hold more than 2**32 - 1 items or bytes")


# ------------------------------------------------------------------ decoding

#: tag -> (struct, size in bytes) of the numbers
_NUMBERS = {
    0xCA: _f,
    0xCB: _d,
    0xCC: _B,
    0xCD: _H,
    0xCE: _I,
    0xCF: _Q,
    0xD0: _b,
    0xD1: _h,
    0xD2: _i,
    0xD3: _q,
}
#: tag -> (kind, struct of the length) of the sized str, bin, array and map forms
_SIZED = {
    0xD9: ("str", _B),
    0xDA: ("str", _H),
    0xDB: ("str", _I),
    0xC4: ("bin", _B),
    0xC5: ("bin", _H),
    0xC6: ("bin", _I),
    0xDC: ("array", _H),
    0xDD: ("array", _I),
    0xDE: ("map", _H),
    0xDF: ("map", _I),
}


def unpackb(data: bytes) -> Any:
    """Decode one whole value: arrays as lists, maps as dicts (array keys as tuples),
    bin as bytes. DecodeError if the bytes are anything else."""
    try:
        value, end = _unpack(data, 0)
    except (IndexError, struct.error, UnicodeDecodeError, TypeError, RecursionError) as e:
        raise DecodeError(f"invalid msgpack: {e}") from None
    if end != len(data):
        raise DecodeError(f"invalid msgpack: {len(data) - end} trailing bytes")
    return value


def _unpack(b: bytes, i: int) -> tuple[Any, int]:
    tag = b[i]
    i += 1
    if tag < 0x80:
        return tag, i
    if tag >= 0xE0:
        return tag - 0x100, i
    if tag < 0x90:
        return _map(b, i, tag & 0x0F)
    if tag < 0xA0:
        return _array(b, i, tag & 0x0F)
    if tag < 0xC0:
        return _bytes(b, i, tag & 0x1F, "str")
    if tag == 0xC0:
        return None, i
    if tag == 0xC2:
        return False, i
    if tag == 0xC3:
        return True, i
    number = _NUMBERS.get(tag)
    if number is not None:
        return number.unpack_from(b, i)[0], i + number.size
    sized = _SIZED.get(tag)
    if sized is None:
        raise DecodeError(f"invalid msgpack: unsupported type byte 0x{tag:02x}")
    kind, length = sized
    n = length.unpack_from(b, i)[0]
    i += length.size
    if kind == "array":
        return _array(b, i, n)
    if kind == "map":
        return _map(b, i, n)
    return _bytes(b, i, n, kind)


def _bytes(b: bytes, i: int, n: int, kind: str) -> tuple[Any, int]:
    end = i + n
    if end > len(b):
        raise IndexError("truncated")
    data = b[i:end]
    return (data.decode("utf-8") if kind == "str" else bytes(data)), end


def _array(b: bytes, i: int, n: int) -> tuple[list[Any], int]:
    if n > len(b) - i:  # each item is at least one byte: no huge list from a lying header
        raise IndexError("truncated")
    items = []
    for _ in range(n):
        item, i = _unpack(b, i)
        items.append(item)
    return items, i


def _map(b: bytes, i: int, n: int) -> tuple[dict[Any, Any], int]:
    if 2 * n > len(b) - i:
        raise IndexError("truncated")
    result = {}
    for _ in range(n):
        key, i = _unpack(b, i)
        if isinstance(key, list):
            key = _freeze(key)
        result[key], i = _unpack(b, i)
    return result, i


def _freeze(value: Any) -> Any:
    return tuple(map(_freeze, value)) if isinstance(value, list) else value
