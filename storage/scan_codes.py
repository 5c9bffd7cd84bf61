"""The scan-code file (`scan.pq`): compact codes of every posting record, in posting order, meant to be held
whole in RAM so that a query served from disk scans its probed postings without reading them (index/tierscan.py).

    offset      size                     section
    0           4096                     file header (storage.fileheader; magic VDBSCAN1, record_size = code bytes)
    4096        64                       layout: n_postings u64, n_entries u64, code_bytes u32, ksub u32, dsub u32,
                                         base_bytes u32, codebook CRC u32, table CRC u32, CRC of these 40 bytes
                                         u32, zero padding
    aligned 64  n_postings * 24          table, per posting id: start u64 (first entry), count u32 (entries), the
                                         posting's directory CRC when it was encoded u32, CRC of its entries u32,
                                         the posting's directory count when it was encoded u32
    aligned 64  code_bytes*ksub*dsub*4   codebook float32 [code_bytes, ksub, dsub] + its CRC in the table's 0 slot
    aligned 64  n_postings * base_bytes  base codes (INT8, the posting's reference point) by posting id
    aligned 64  n_entries * 4            rows u32 (internal ids)
    aligned 64  n_entries                record versions u8 (a record counts only if it equals the row's state)
    aligned 64  n_entries * 4            terms float32 (the squared norm of each decoded vector)
    aligned 64  n_entries * code_bytes   codes u8

A posting's CRC covers its rows, versions, terms, codes and base code; the codebook and the table have their own
CRCs (in the layout). The file is written once, into a temporary name, fsync'd and renamed (storage.fileio), so a crash
leaves the old file or the new one; an entry whose posting has changed since (the directory CRC or count differ)
is stale and the reader goes back to the posting itself.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from storage.crashpoints import crashpoint
from storage.errors import CorruptionError, FormatError
from storage.fileheader import HEADER_SIZE, FileHeader, unpack_header
from storage.fileio import fsync_dir

MAGIC = b"VDBSCAN1"
VERSION = 1
ALIGN = 64
_LAYOUT = struct.Struct("<QQIIIIII")  # n_postings, n_entries, code_bytes, ksub, dsub, base_bytes, codebook crc,
                                      # table crc
_LAYOUT_CRC = struct.Struct("<I")
TABLE_DTYPE = np.dtype([("start", "<u8"), ("count", "<u4"), ("src_crc", "<u4"), ("crc", "<u4"), ("src_count", "<u4")])
_HEADERS_SIZE = HEADER_SIZE + _LAYOUT.size + _LAYOUT_CRC.size  # what has to be read to know the file's layout


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _parse_headers(path: Path, raw: bytes, size: int) -> tuple[int, tuple, dict]:
    """(dim, the layout's fields, its sections) from the first _HEADERS_SIZE bytes of a file of `size` bytes:
    both headers' checksums checked, and the file long enough for the layout."""
    if len(raw) < _HEADERS_SIZE:
        raise CorruptionError(path, f"file is {len(raw)} bytes, shorter than its headers")
    header = unpack_header(path, raw[:HEADER_SIZE], magic=MAGIC, versions=(VERSION,))
    layout = raw[HEADER_SIZE: HEADER_SIZE + _LAYOUT.size]
    (crc,) = _LAYOUT_CRC.unpack_from(raw, HEADER_SIZE + _LAYOUT.size)
    if zlib.crc32(layout) != crc:
        raise CorruptionError(path, "scan-code layout fails its checksum", offset=HEADER_SIZE,
                              length=_LAYOUT.size + _LAYOUT_CRC.size)
    fields = _LAYOUT.unpack(layout)
    if fields[2] != header.record_size:
        raise CorruptionError(path, "header and layout disagree on the code size", offset=20, length=4)
    n_postings, n_entries, code_bytes, ksub, dsub, base_bytes, *_crcs = fields
    sections = _sections(n_postings, n_entries, code_bytes, ksub, dsub, base_bytes)
    if sections["end"][0] > size:
        raise CorruptionError(path, f"file is {size} bytes, its layout needs {sections['end'][0]}")
    return header.dim, fields, sections


def _sections(n_postings: int, n_entries: int, code_bytes: int, ksub: int, dsub: int, base_bytes: int) -> dict:
    """name -> (offset, nbytes) of every section."""
    sizes = [("table", n_postings * TABLE_DTYPE.itemsize), ("codebook", code_bytes * ksub * dsub * 4),
             ("base", n_postings * base_bytes), ("rows", n_entries * 4), ("versions", n_entries),
             ("terms", n_entries * 4), ("codes", n_entries * code_bytes)]
    out, pos = {}, _align(HEADER_SIZE + ALIGN)
    for name, size in sizes:
        out[name] = (pos, size)
        pos = _align(pos + size)
    out["end"] = (pos, 0)
    return out


def entry_crc(rows: np.ndarray, versions: np.ndarray, terms: np.ndarray, codes: np.ndarray, base: np.ndarray) -> int:
    """CRC-32 of one posting's entries and base code (the writer's and the reader's one definition)."""
    c = 0
    for part in (rows, versions, terms, codes, base):
        c = zlib.crc32(np.ascontiguousarray(part).view(np.uint8), c)
    return c


def write_scan_codes(path: str | os.PathLike, dim: int, table: np.ndarray, codebook: np.ndarray, base: np.ndarray,
                     rows: np.ndarray, versions: np.ndarray, terms: np.ndarray, codes: np.ndarray) -> None:
    """Write a complete scan-code file at `path` atomically (temp name, fsync, rename, fsync of the directory).
    `table` is TABLE_DTYPE with start / count / src_crc filled; the entry CRCs are computed here."""
    path = Path(path)
    n_postings, n_entries = len(table), len(rows)
    code_bytes, ksub, dsub = codebook.shape
    base_bytes = base.shape[1] if base.ndim == 2 else 0
    table = table.copy()
    for p in range(n_postings):
        s, n = int(table["start"][p]), int(table["count"][p])
        table["crc"][p] = entry_crc(rows[s:s + n], versions[s:s + n], terms[s:s + n], codes[s:s + n], base[p])
    codebook = np.ascontiguousarray(codebook, np.float32)
    layout = _LAYOUT.pack(n_postings, n_entries, code_bytes, ksub, dsub, base_bytes,
                          zlib.crc32(codebook.view(np.uint8)), zlib.crc32(table.view(np.uint8)))
    sec = _sections(n_postings, n_entries, code_bytes, ksub, dsub, base_bytes)
    remove_dead_temps(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(FileHeader(MAGIC, VERSION, dim, code_bytes).pack())
        f.write(layout + _LAYOUT_CRC.pack(zlib.crc32(layout)))
        for name, arr in (("table", table), ("codebook", codebook), ("base", base), ("rows", rows),
                          ("versions", versions), ("terms", terms), ("codes", codes)):
            f.seek(sec[name][0])
            f.write(np.ascontiguousarray(arr).view(np.uint8).tobytes() if len(arr) else b"")
        f.truncate(sec["end"][0])
        crashpoint("scan-codes-written")
        f.flush()
        os.fsync(f.fileno())
    crashpoint("scan-codes-before-publish")
    os.replace(tmp, path)
    fsync_dir(path.parent)
    crashpoint("scan-codes-published")  # before the caller commits what it measured through them


def remove_dead_temps(path: Path) -> list[Path]:
    """Delete the temporary files of writers of `path` that died before publishing (their pid is gone)."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class ScanCodeFile:
    """A scan-code file opened read-only through one shared mapping; the arrays are views of it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.locked = False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE + ALIGN:
                raise CorruptionError(self.path, f"file is {size} bytes, shorter than its headers")
            self._map = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        buf = np.frombuffer(self._map, np.uint8)
        self.buffer = buf
        dim, (n_postings, n_entries, code_bytes, ksub, dsub, base_bytes, self._codebook_crc, table_crc), sec = \
            _parse_headers(self.path, bytes(buf[:_HEADERS_SIZE]), size)
        self.dim, self.n_postings, self.n_entries = dim, n_postings, n_entries
        self.code_bytes, self.ksub, self.dsub, self.base_bytes = code_bytes, ksub, dsub, base_bytes
        self._sec = sec

        def view(name, dtype, shape):
            off, nbytes = sec[name]
            return buf[off: off + nbytes].view(dtype).reshape(shape)

        self.table = view("table", TABLE_DTYPE, (n_postings,))
        if zlib.crc32(self.table.view(np.uint8)) != table_crc:  # the offsets below must be right before any use
            raise CorruptionError(self.path, "scan-code table fails its checksum", offset=sec["table"][0],
                                  length=sec["table"][1])
        self.codebook = view("codebook", np.float32, (code_bytes, ksub, dsub))
        self.base = view("base", np.int8, (n_postings, base_bytes))
        self.rows = view("rows", np.uint32, (n_entries,))
        self.versions = view("versions", np.uint8, (n_entries,))
        self.terms = view("terms", np.float32, (n_entries,))
        self.codes = view("codes", np.uint8, (n_entries, code_bytes))
        self.start = self.table["start"].astype(np.int64)
        self.count = self.table["count"].astype(np.int64)
        if n_postings and (self.start.min() < 0 or (self.start + self.count).max() > n_entries):
            raise CorruptionError(self.path, "scan-code table points past its entries", offset=sec["table"][0],
                                  length=sec["table"][1])

    @property
    def nbytes(self) -> int:
        """Bytes of the file (all of it is mapped, and resident once locked)."""
        return len(self.buffer)

    def verify(self) -> list[int]:
        """Posting ids whose entries fail their CRC; -1 first if the codebook does (`vdbctl check`, open)."""
        bad = [-1] if zlib.crc32(np.ascontiguousarray(self.codebook).view(np.uint8)) != self._codebook_crc else []
        crc = self.table["crc"]
        for p in range(self.n_postings):
            s, n = int(self.start[p]), int(self.count[p])
            if entry_crc(self.rows[s:s + n], self.versions[s:s + n], self.terms[s:s + n], self.codes[s:s + n],
                         self.base[p]) != int(crc[p]):
                bad.append(p)
        return bad

    def raise_corrupt(self, posting: int) -> None:
        if posting < 0:
            off, n = self._sec["codebook"]
            raise CorruptionError(self.path, "scan-code codebook fails its checksum", offset=off, length=n)
        s = int(self.start[posting])
        raise CorruptionError(self.path, f"scan codes of posting {posting} fail their checksum",
                              offset=self._sec["codes"][0] + s * self.code_bytes,
                              length=int(self.count[posting]) * self.code_bytes)

    def lock_in_memory(self) -> bool:
        """mlock the whole mapping (page cache the kernel may not evict, charged to this process's memory cgroup).
        False if the kernel refuses (RLIMIT_MEMLOCK): the pages then stay evictable."""
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            return False
        addr = ctypes.c_void_p(int(self.buffer.ctypes.data))
        self.locked = libc.mlock(addr, ctypes.c_size_t(len(self.buffer))) == 0
        return self.locked

    def close(self) -> None:
        """Drop the views; the mapping goes when the last numpy view of it does."""
        for name in ("table", "codebook", "base", "rows", "versions", "terms", "codes", "buffer"):
            setattr(self, name, None)
        self._map = None


def scan_codes_summary(path: str | os.PathLike) -> dict | None:
    """What the scan-code file at `path` holds, from its headers alone (two small reads, no mapping: cheap enough
    for every stats call): postings, entries, code_bytes, the file's bytes and its content_crc. None if there is
    no file; CorruptionError / FormatError if its headers are damaged or the file is shorter than they say."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(_HEADERS_SIZE)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise FormatError(f"{path}: a directory where the scan-code file belongs") from None
    # the size too: a truncated file would otherwise fail only when a budgeted open maps it
    _, (n_postings, n_entries, code_bytes, *_rest), _ = _parse_headers(path, raw, size)
    # the layout's CRC names the content: the layout holds the codebook's CRC and the table's, and the table
    # every posting's (a calibration measured through these codes records it, index/build.py)
    content_crc = zlib.crc32(raw[HEADER_SIZE: HEADER_SIZE + _LAYOUT.size])
    return {"postings": n_postings, "entries": n_entries, "code_bytes": code_bytes, "bytes": size,
            "content_crc": content_crc}


def open_scan_codes(path: str | os.PathLike) -> ScanCodeFile | None:
    """The scan-code file at `path`, or None if there is none; FormatError if it is not one."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_dir():
        raise FormatError(f"{path}: a directory where the scan-code file belongs")
    return ScanCodeFile(path)
