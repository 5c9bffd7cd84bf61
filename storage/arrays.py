"""How a MetaStore holds an array (its "arrays" table): CRC-32 of the body, then the body, a .npy image, or for
a large array that compresses to under half, ZLIB_MAGIC + zlib(.npy image). Read back in place from LMDB's
mapping (view_array), or as a stream of bytes inflated as they are read (ArrayStream)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

from storage.errors import CorruptionError

ARRAY_CRC = struct.Struct("<I")
ZLIB_MAGIC = b"VDBZ"  # a compressed array's body (a .npy image starts with b"\x93NUMPY", never with this)
ZLIB_MIN, ZLIB_PROBE = 256 << 10, 64 << 10  # arrays this large are probed; the probe is this many bytes


def checked_body(raw, path: Path, name: str) -> memoryview:
    """The body of a stored array value `raw`, after its CRC-32: CorruptionError (naming `path`) if it fails."""
    (crc,) = ARRAY_CRC.unpack_from(raw)
    body = memoryview(raw)[ARRAY_CRC.size:]
    if zlib.crc32(body) != crc:
        raise CorruptionError(path, f"stored array {name!r} fails its checksum", length=len(body))
    return body


def view_array(body: memoryview) -> np.ndarray:
    """The array of a checked body: viewed in place, or inflated first when it is compressed."""
    if body[: len(ZLIB_MAGIC)] == ZLIB_MAGIC:
        body = memoryview(zlib.decompress(body[len(ZLIB_MAGIC):]))
    return _view_npy(body)


def encode_array(a: np.ndarray) -> np.ndarray:
    """CRC-32 + the .npy image, or, for a large array that compresses to under half (the per-row state and id
    arrays of a collection whose rows are mostly dead: long runs of -1 and of the deleted bit), CRC-32 +
    ZLIB_MAGIC + zlib(.npy image). Without this the arrays of rows ever written, rewritten by every checkpoint,
    made LMDB the largest file of a collection under overwrite churn (issue 13).

    Assembled in one uint8 array by numpy copies and checksummed by zlib, which both release the GIL on large
    buffers (and LMDB's put takes the array as it is): a BytesIO image, its getvalue() and a bytes concatenation
    were three copies under the GIL, ~100 ms per checkpoint for the 150 MB head index of 10M rows, which every
    search running meanwhile waited for (issue 13)."""
    a = np.ascontiguousarray(a)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(a))
    header = head.getvalue()
    data = a.reshape(-1).view(np.uint8)
    parts = [header, data]
    if len(header) + len(data) >= ZLIB_MIN and \
            len(zlib.compress(header + data[: ZLIB_PROBE - len(header)].tobytes(), 1)) < ZLIB_PROBE // 2:
        z = zlib.compressobj(1)  # zlib releases the GIL while it works
        packed = [z.compress(header), z.compress(data), z.flush()]
        if sum(map(len, packed)) < (len(header) + len(data)) // 2:
            parts = [ZLIB_MAGIC, *packed]
    out = np.empty(ARRAY_CRC.size + sum(map(len, parts)), np.uint8)
    at = ARRAY_CRC.size
    for part in parts:
        out[at: at + len(part)] = np.frombuffer(part, np.uint8)
        at += len(part)
    out[: ARRAY_CRC.size] = np.frombuffer(ARRAY_CRC.pack(zlib.crc32(out[ARRAY_CRC.size:])), np.uint8)
    return out


class ArrayStream:
    """read(n) -> up to n bytes of a stored array's body (its .npy image), inflated as they are read when the
    body is compressed: a reader that copies what it reads into its own structures (faiss) never needs the whole
    image in memory as well."""
    CHUNK = 1 << 20

    def __init__(self, body: memoryview):
        self._compressed = body[: len(ZLIB_MAGIC)] == ZLIB_MAGIC
        self._body = body[len(ZLIB_MAGIC):] if self._compressed else body
        self._pos = 0
        self._inflate = zlib.decompressobj() if self._compressed else None

    def rest(self) -> bytes:
        """Everything left (to check that nothing is: see stream_bytes)."""
        parts = []
        while chunk := self.read(self.CHUNK):
            parts.append(chunk)
        if self._compressed:
            parts.append(self._inflate.flush())
        return b"".join(parts)

    @property
    def ended(self) -> bool:
        """The compressed stream's end was reached, with nothing after it (always True when uncompressed)."""
        return not self._compressed or (self._inflate.eof and not self._inflate.unused_data
                                        and not self._inflate.unconsumed_tail and self._pos >= len(self._body))

    def read(self, n: int) -> bytes:
        if not self._compressed:
            chunk = bytes(self._body[self._pos: self._pos + n])
            self._pos += len(chunk)
            return chunk
        parts, have = [], 0
        while have < n and not self._inflate.eof:  # past its end zlib keeps handing the input back
            src = self._inflate.unconsumed_tail
            if not src:
                if self._pos >= len(self._body):
                    break
                src = self._body[self._pos: self._pos + self.CHUNK]
                self._pos += len(src)
            piece = self._inflate.decompress(src, n - have)
            parts.append(piece)
            have += len(piece)
        return b"".join(parts)


def read_npy_header(read) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran order, dtype) from a .npy image's header, consumed from `read`."""
    class _Reader:  # what np.lib.format's header readers take: an object with read(n)
        def read(self, n):
            return read(n)
    head = _Reader()
    version = np.lib.format.read_magic(head)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
    if dtype.hasobject:
        raise ValueError("stored arrays never hold Python objects")
    return shape, fortran, dtype


def _view_npy(body: memoryview) -> np.ndarray:
    """A .npy image viewed in place (the header parsed; no pickles)."""
    head = io.BytesIO(bytes(body[: min(len(body), 1 << 16)]))
    shape, fortran, dtype = read_npy_header(head.read)
    count = int(np.prod(shape)) if shape else 1
    a = np.frombuffer(body, dtype, count=count, offset=head.tell())
    return a.reshape(shape, order="F" if fortran else "C")


def stream_bytes(body: memoryview, path: Path, name: str, use):
    """use(read) over the bytes of a checked body holding a 1-D uint8 array: read(n) returns up to n of them,
    never past the length the header gives. The reader must take them all and the image must end there; a
    header, length or compressed stream that disagrees with it is a CorruptionError naming `path`, and so is a
    reader's or the inflater's own failure on them (faiss: RuntimeError; zlib: zlib.error)."""
    stream = ArrayStream(body)
    try:
        shape, _, dtype = read_npy_header(stream.read)
    except ValueError as e:
        raise CorruptionError(path, f"stored array {name!r} has no valid header ({e})") from None
    if dtype != np.uint8 or len(shape) != 1:
        raise CorruptionError(path, f"stored array {name!r} is {dtype} {shape}, not a byte string")
    left = [int(shape[0])]

    def read(n: int) -> bytes:
        chunk = stream.read(min(n, left[0]))
        left[0] -= len(chunk)
        return chunk
    try:
        result = use(read)
        trailing = stream.rest()
    except (RuntimeError, zlib.error) as e:
        raise CorruptionError(path, f"stored array {name!r} cannot be read ({e})") from None
    if left[0] or trailing or not stream.ended:
        raise CorruptionError(path, f"stored array {name!r}: its {int(shape[0])} bytes "
                              f"{'were not all read' if left[0] else 'are followed by more'}")
    return result
