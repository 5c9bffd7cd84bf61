"""Checksums of a tantivy index directory: which files its meta.json names, and whether each is whole.

tantivy ends every segment file with a footer: the JSON `{"version": ..., "crc": <CRC-32 of the body>}`, its
length (u32 LE) and the magic number 1337 (u32 LE) (tantivy/src/directory/footer.rs). tantivy checks the magic
when it opens a file, never the CRC, so zeroed or flipped bytes inside a segment are read as if they were data:
a search then panics (an "index out of bounds" from its decoders) or, worse, answers from the wrong postings.
meta.json itself has no footer (tantivy replaces it atomically); a directory without it is no index at all.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

FOOTER_MAGIC = 1337
SEGMENT_FILES = (".fast", ".fieldnorm", ".idx", ".pos", ".store", ".term")   # .pos: absent when not indexed
REQUIRED = (".fast", ".fieldnorm", ".idx", ".store", ".term")
CHUNK = 1 << 20


def named_files(where: Path) -> list[Path]:
    """Every file the committed meta.json of the index at `where` needs (raises ValueError when it cannot say)."""
    try:
        meta = json.loads((where / "meta.json").read_bytes())
        segments = meta["segments"]
        out = []
        for seg in segments:
            stem = str(seg["segment_id"]).replace("-", "")
            out += [where / f"{stem}{ext}" for ext in SEGMENT_FILES
                    if ext in REQUIRED or (where / f"{stem}{ext}").exists()]
            if seg.get("deletes"):
                out.append(where / f"{stem}.{int(seg['deletes']['opstamp'])}.del")
        return out
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{where / 'meta.json'}: {e}") from None


def damage(where: Path) -> list[str]:
    """What is wrong with the index at `where`: a missing meta.json or segment file, or a file whose footer or
    CRC does not hold. Empty when every committed file is whole."""
    if not (where / "meta.json").exists():
        return [f"{where}: meta.json is missing"]
    try:
        files = named_files(where)
    except ValueError as e:
        return [str(e)]
    return [p for p in map(_file_damage, files) if p]


def _file_damage(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 8:
                return f"{path}: {size} bytes, too short for tantivy's footer"
            f.seek(size - 8)
            footer_len, magic = struct.unpack("<II", f.read(8))
            if magic != FOOTER_MAGIC or footer_len + 8 > size:
                return f"{path}: no tantivy footer (truncated or overwritten)"
            body = size - 8 - footer_len
            f.seek(body)
            stored = json.loads(f.read(footer_len))["crc"]
            f.seek(0)
            crc, left = 0, body
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    return f"{path}: shorter than its footer says"
                crc, left = zlib.crc32(chunk, crc), left - len(chunk)
    except FileNotFoundError:
        return f"{path}: missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path}: unreadable footer ({e})"
    return None if crc == stored else f"{path}: CRC-32 {crc:#010x}, the footer says {stored:#010x}"
