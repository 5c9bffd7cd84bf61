"""The write-ahead log (spec: docs/wal_format.md).

    format.py   the byte layout and constants, shared by writer and reader (LevelDB's log_format.h)
    writer.py   WriteAheadLog: append with group commit, consumers, purge
    reader.py   segment listing, record iteration, recovery (torn tail vs corruption)
    fs.py       the file-system port the log does all its I/O through (tests substitute a faulty one)
    seed.py     start_log: a new log whose first LSN is given (a collection restored from a snapshot)
"""
from storage.wal.reader import LsnMismatchError, WalCorruptionError, WalFailedError, WalRecord
from storage.wal.seed import start_log
from storage.wal.writer import WriteAheadLog

__all__ = ["LsnMismatchError", "WalCorruptionError", "WalFailedError", "WalRecord", "WriteAheadLog", "start_log"]
