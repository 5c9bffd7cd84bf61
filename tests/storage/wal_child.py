"""Child process of the SIGKILL test: append records forever (policy fsync), print each acknowledged LSN.

Usage: python wal_child.py WAL_DIR. Every line on stdout after "ready" is an LSN whose append returned;
the parent kills this process at a random moment and checks that every printed LSN survived.
"""
from __future__ import annotations

import hashlib
import sys

from storage.wal import WriteAheadLog

SEGMENT_BYTES = 16 << 10  # small segments: the kill also lands during rotations


def payload_for(lsn: int) -> bytes:
    """The payload of record `lsn`: 32 to 288 bytes, derived from the LSN alone."""
    return hashlib.sha256(lsn.to_bytes(8, "little")).digest() * (1 + lsn % 9)


def rtype_for(lsn: int) -> int:
    return 1 + lsn % 127


def main(directory: str) -> None:
    wal = WriteAheadLog(directory, durability="fsync", segment_bytes=SEGMENT_BYTES)
    print("ready", flush=True)
    while True:
        lsn = wal.last_lsn + 1  # single writer: the next LSN is known before the append
        got = wal.append(rtype_for(lsn), payload_for(lsn))
        if got != lsn:
            raise SystemExit(f"expected LSN {lsn}, got {got}")
        print(got, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
