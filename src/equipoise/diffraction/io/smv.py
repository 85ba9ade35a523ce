"""SMV ("ADSC") images as nanoBragg writes them: a ``{ KEY=VALUE; ... }`` text header padded to
``HEADER_BYTES`` (512 by default), followed by the pixels, fast index fastest.

Reading accepts either byte order, header sizes above 512 and the usual integer and float pixel
types; writing produces nanoBragg's layout (PHYSICS.md §1.12): ``HEADER_BYTES DIM BYTE_ORDER TYPE
SIZE1 SIZE2`` first, then the caller's fields, then ``}`` and a form feed, padded with spaces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from equipoise.errors import InputError

#: SMV ``TYPE`` -> numpy kind (byte order added from ``BYTE_ORDER``)
SMV_TYPES: dict[str, str] = {
    "unsigned_short": "u2",
    "signed_short": "i2",
    "short": "i2",
    "unsigned_int": "u4",
    "signed_int": "i4",
    "int": "i4",
    "unsigned_long": "u4",
    "long": "i4",
    "float": "f4",
    "double": "f8",
}
#: keys the writer sets itself; a caller's values for them are ignored
RESERVED_KEYS = ("HEADER_BYTES", "DIM", "BYTE_ORDER", "TYPE", "SIZE1", "SIZE2")
_FIELD = re.compile(r"^\s*([^=;{}\s]+)\s*=\s*([^;]*);", re.MULTILINE)


def _header_int(header: dict[str, str], key: str, path: Path) -> int:
    if key not in header:
        raise InputError(f"SMV header lacks {key}", path=path, field=key)
    try:
        value = int(float(header[key]))
    except ValueError:
        raise InputError(f"expected an integer, found {header[key]!r}", path=path, field=key) from None
    if value <= 0:
        raise InputError(f"expected a positive integer, found {value}", path=path, field=key)
    return value


def read_smv(path: str | Path) -> tuple[dict[str, str], np.ndarray]:
    """Read an SMV image.

    Returns (header, image): ``header`` maps every ``KEY`` to its ``VALUE`` text, in file order;
    ``image`` has shape (SIZE2, SIZE1) = (slow, fast) in native byte order with the file's type.
    Raises InputError for a missing ``{``, missing or bad HEADER_BYTES/SIZE1/SIZE2, an unknown
    TYPE or BYTE_ORDER, or a file too short for its pixels.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read SMV file: {exc}", path=p) from exc
    if not raw.startswith(b"{"):
        raise InputError("not an SMV image: the header must start with '{'", path=p)
    end = raw.find(b"}")
    if end < 0:
        raise InputError("malformed SMV header: no closing '}'", path=p)
    text = raw[1:end].decode("ascii", errors="replace")
    header = {m.group(1): m.group(2).strip() for m in _FIELD.finditer(text)}
    header_bytes = _header_int(header, "HEADER_BYTES", p)
    if header_bytes < end + 1:
        raise InputError(f"HEADER_BYTES={header_bytes} is shorter than the header text ({end + 1} bytes)",
                         path=p, field="HEADER_BYTES")
    fast = _header_int(header, "SIZE1", p)
    slow = _header_int(header, "SIZE2", p)
    type_name = header.get("TYPE", "unsigned_short").lower()
    if type_name not in SMV_TYPES:
        raise InputError(f"unsupported pixel TYPE {type_name!r}; expected one of {', '.join(SMV_TYPES)}",
                         path=p, field="TYPE")
    order_name = header.get("BYTE_ORDER", "little_endian").lower()
    orders = {"little_endian": "<", "big_endian": ">"}
    if order_name not in orders:
        raise InputError(f"unknown BYTE_ORDER {order_name!r}; expected little_endian or big_endian",
                         path=p, field="BYTE_ORDER")
    dtype = np.dtype(orders[order_name] + SMV_TYPES[type_name])
    needed = header_bytes + fast * slow * dtype.itemsize
    if len(raw) < needed:
        raise InputError(f"file too short: {fast}x{slow} {type_name} pixels after a {header_bytes}-byte header "
                         f"need {needed} bytes, found {len(raw)}", path=p)
    data = np.frombuffer(raw, dtype=dtype, count=fast * slow, offset=header_bytes)
    return header, data.reshape(slow, fast).astype(dtype.newbyteorder("="))


def write_smv(path: str | Path, image: np.ndarray, fields: Mapping[str, object] | None = None) -> None:
    """Write ``image`` (slow, fast) of uint16 as a little-endian SMV file with nanoBragg's header layout.

    ``fields`` are extra ``KEY=VALUE`` pairs written after SIZE2 in the given order (values are
    formatted with ``str``); the reserved keys (HEADER_BYTES ... SIZE2) are set from the image.
    The header is 512 bytes, or the next multiple of 512 when the fields do not fit.
    """
    if image.ndim != 2:
        raise InputError(f"SMV image must be 2-D (slow, fast), got shape {image.shape}")
    if image.dtype != np.uint16:
        raise InputError(f"SMV writer expects uint16 pixels, got {image.dtype}")
    slow, fast = image.shape
    body = ""
    for key, value in (fields or {}).items():
        if key in RESERVED_KEYS:
            continue
        text = str(value)
        if any(c in text for c in ";{}\n") or any(c in key for c in "=;{}\n "):
            raise InputError(f"SMV header field {key}={text!r} contains a reserved character", field=key)
        body += f"{key}={text};\n"

    def render(size: int) -> bytes:
        head = (f"{{\nHEADER_BYTES={size};\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
                f"SIZE1={fast};\nSIZE2={slow};\n{body}}}\f")
        return head.encode("ascii")

    size = 512
    while len(render(size)) > size:
        size += 512
    header = render(size).ljust(size, b" ")
    with open(path, "wb") as handle:
        handle.write(header)
        handle.write(np.ascontiguousarray(image, dtype="<u2").tobytes())
