"""Write-ahead log: numbered, checksummed records in segment files, with group commit (spec: docs/wal_format.md).

Why it looks the way it does:
- Every record carries its own LSN and a CRC-32 over length, LSN, type and payload, so a reader can tell a
  valid record from leftovers of a torn write without trusting anything else in the file.
- A torn final write is normal after a crash, damage before the end is not; recovery (recovery.py) drops the
  first with a warning and reports the second, unless a checkpoint covers every record it can affect.
- One fsync covers every record written before it, so concurrent appenders share fsyncs (group commit):
  whoever finds no write in flight writes everything buffered so far; whoever finds no fsync in flight
  fsyncs everything written so far. Writing the next group overlaps the previous group's fsync.
- A segment is fsync'd ("sealed") before its successor is created, and the successor's header and name are
  fsync'd before a record goes into it, so only the last segment can ever end in a torn write.
- Space is allocated ahead of the records (_reserve), so a full disk refuses a record before it is logged.
- After a failed write or fsync the log refuses all further work: the kernel may already have dropped the
  dirty pages, so a retried fsync could "succeed" without the data (PostgreSQL's fsyncgate).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterable, Iterator

from storage.errors import DiskFullError, is_disk_full
from storage.wal.consumers import as_int, load_consumers, save_consumers
from storage.wal.encoding import check_record, put_record
from storage.wal.format import (CONSUMERS_FILE, DEFAULT_SEGMENT_BYTES, NONE_BUFFER_BYTES, RECORD_HEADER_SIZE,
                                SEGMENT_HEADER_SIZE, segment_name)
from storage.wal.fs import File, FileSystem, RealFS
from storage.wal.reader import (LsnMismatchError, WalCorruptionError, WalFailedError, WalRecord, _Segment,
                                encode_segment_header, segment_records)
from storage.wal.recovery import _recover
from storage.wal.rolling import RollingLog

log = logging.getLogger(__name__)
POLICIES = ("fsync", "batch", "none")
RESERVE_CHUNK = 1 << 20  # a segment's blocks are allocated ahead in steps of this many bytes


class WriteAheadLog(RollingLog):
    """An append-only log of (LSN, type, payload) records in DIR/wal-<first LSN>.log segment files.

    `append`/`append_many` are thread-safe and return once their records are durable under `durability`:
    "fsync" (after an fsync that covers them; default), "batch" (after write(2); a background thread fsyncs
    every `batch_delay_ms`) or "none" (in process memory only: unsafe, see docs/wal_format.md). Opening runs
    recovery, which raises `WalCorruptionError` on damage other than a torn final write unless `repair`;
    damage confined to records with LSN <= `covered_lsn` (a checkpoint has them) is dropped with a warning
    (storage/wal/recovery.py).
    """

    def __init__(self, directory: str | os.PathLike, *, durability: str = "fsync", batch_delay_ms: float = 10.0,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, repair: bool = False, fs: FileSystem | None = None,
                 covered_lsn: int = 0):
        if durability not in POLICIES:
            raise ValueError(f"durability must be one of {POLICIES}, got {durability!r}")
        if not batch_delay_ms > 0:
            raise ValueError(f"batch_delay_ms must be positive, got {batch_delay_ms!r}")
        if segment_bytes < SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE:
            raise ValueError(f"segment_bytes must be at least {SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE}")
        self.directory, self.policy = os.fspath(directory), durability
        self._fs: FileSystem = fs if fs is not None else RealFS()
        self._segment_bytes, self._delay = segment_bytes, batch_delay_ms / 1000.0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._meta_lock = threading.Lock()  # consumers and purge; always taken before self._lock, never after
        self._buf = bytearray()             # encoded records not yet handed to the OS (all for the active segment)
        self._writing = self._syncing = self._closed = False
        self._rotators = 0                  # appenders waiting for idle I/O to rotate
        self._failed: BaseException | None = None
        self._pins: Counter[int] = Counter()  # first LSN of the oldest segment each running replay still needs
        self._fsyncs = self._appends = 0
        self._fs.makedirs(self.directory)
        self._dir_lock = self._fs.lock(self.directory)
        try:
            self._open(repair, covered_lsn)
        except BaseException:
            self._dir_lock.close()
            raise
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if durability == "batch":
            self._flusher = threading.Thread(target=self._flush_loop, name=f"wal-flusher:{self.directory}",
                                             daemon=True)
            self._flusher.start()

    def _open(self, repair: bool, covered_lsn: int) -> None:
        self._consumers = load_consumers(self._fs, os.path.join(self.directory, CONSUMERS_FILE))
        segments = _recover(self._fs, self.directory, repair=repair, covered_lsn=covered_lsn)
        if not segments:
            if self._consumers:
                raise WalCorruptionError(self.directory, f"{CONSUMERS_FILE} exists but there is no segment file; "
                                         "the log was deleted")
            segments = [self._create_segment(1)]  # a new log (a collection with a checkpoint reports the loss)
        self._sealed, self._active = segments[:-1], segments[-1]
        self._file: File = self._fs.open(self._active.path)
        # What recovery read may still sit only in the page cache (the last process died before its fsync):
        # make it durable before reporting it as durable.
        self._file.fsync()
        self._fs.fsync_dir(self.directory)
        self._fsyncs += 1
        self._last_lsn = self._written_lsn = self._durable_lsn = self._active.last_lsn
        self._planned = self._active.size  # bytes of the active segment, including buffered and in-flight ones
        self._reserved_end = self._active.size  # allocated ahead up to here (see _reserve)
        ahead = {n: a for n, a in self._consumers.items() if a > self._last_lsn}
        if ahead:
            log.error("%s: consumers %s have applied LSNs beyond the end of the log (LSN %d): records were lost "
                      "(repair or manual deletion); they must resynchronise", self.directory, ahead, self._last_lsn)
        log.info("opened WAL %s: %d segment(s), LSNs %d..%d (%d records), durability %s", self.directory,
                 len(segments), segments[0].first_lsn, self._last_lsn,
                 self._last_lsn - segments[0].first_lsn + 1, self.policy)

    def _create_segment(self, first_lsn: int) -> _Segment:
        """Create a segment whose header and name are durable before any record goes into it."""
        path = os.path.join(self.directory, segment_name(first_lsn))
        f = self._fs.create(path)
        try:
            f.pwrite(encode_segment_header(first_lsn), 0)
            f.fsync()
        finally:
            f.close()
        self._fs.fsync_dir(self.directory)
        self._fsyncs += 1
        return _Segment(path, first_lsn, first_lsn - 1, SEGMENT_HEADER_SIZE)

    # ------------------------------------------------------------------------------------------ appending

    def append(self, rtype: int, payload: bytes) -> int:
        """Append one record; return its LSN once it is durable under the policy."""
        return self.append_many([(rtype, payload)])[0]

    def append_many(self, records: Iterable[tuple[int, bytes]], *, first_lsn: int | None = None) -> list[int]:
        """Append records with consecutive LSNs in one durable step (one write, one fsync under "fsync").
        `first_lsn` (replication): the LSN the first must get, else LsnMismatchError and nothing is appended.
        Not atomic across a crash: if it has not returned, any prefix of the records may survive."""
        items = [check_record(rtype, payload) for rtype, payload in records]
        if not items:
            return []
        sizes = [RECORD_HEADER_SIZE + len(payload) for _, payload in items]
        with self._lock:
            self._check_usable()
            # Rotation needs the segment's I/O to be idle; wait for that *before* taking LSNs so that the
            # lock is never released between two records of one call (their LSNs stay consecutive).
            # Meanwhile nobody starts new I/O (see _advance), so the wait is one write + one fsync at most.
            if self._rotation_needed(sizes) and (self._writing or self._syncing):
                self._rotators += 1
                try:
                    while self._rotation_needed(sizes) and (self._writing or self._syncing):
                        self._cond.wait()
                        self._check_usable()
                finally:
                    self._rotators -= 1
                    self._cond.notify_all()
            first = self._last_lsn + 1
            if first_lsn is not None and first_lsn != first:
                raise LsnMismatchError(f"{self.directory}: the next LSN is {first}, not {first_lsn}")
            for (rtype, payload), size in zip(items, sizes):
                if self._rotation_needed([size]):
                    self._rotate()
                self._reserve(self._planned + size)  # a full disk refuses the record here, before it is buffered
                put_record(self._buf, self._last_lsn + 1, rtype, payload)
                self._last_lsn += 1
                self._planned += size
            self._appends += len(items)
            last = self._last_lsn
            if self.policy == "fsync":
                self._advance(last, sync=True)
            elif self.policy == "batch" or len(self._buf) >= NONE_BUFFER_BYTES:
                self._advance(last, sync=False)
        return list(range(first, last + 1))

    def _rotation_needed(self, sizes: list[int]) -> bool:
        """Would one of these records overflow the active segment? A record too big for any segment goes
        alone into an empty one, so an empty segment never overflows."""
        planned = self._planned
        for size in sizes:
            if planned > SEGMENT_HEADER_SIZE and planned + size > self._segment_bytes:
                return True
            planned += size
        return False

    def _reserve(self, end: int) -> None:
        """Allocate the active segment's blocks up to `end` ahead of the writes (in RESERVE_CHUNK steps), so that
        a full disk is a DiskFullError here, under the lock and before a record is buffered, never a write that
        fails halfway. Lock held."""
        if end <= self._reserved_end:
            return
        want = max(end, min(self._reserved_end + RESERVE_CHUNK, self._segment_bytes))
        try:
            self._file.reserve(self._reserved_end, want - self._reserved_end)
        except DiskFullError:
            self._file.reserve(self._reserved_end, end - self._reserved_end)  # just this record, or raise
            want = end
        self._reserved_end = want

    def _rotate(self) -> None:
        """Seal the active segment (write + fsync) and start the next one. Lock held, segment I/O idle.

        A full disk while creating the next segment is a DiskFullError and leaves the sealed segment active (the
        log stays usable, nothing of the refused record was buffered); any other failure fails the log."""
        try:
            if self._buf:
                self._file.pwrite(self._buf, self._active.size)
                self._active.size += len(self._buf)
                self._buf = bytearray()
            if self._durable_lsn < self._last_lsn:
                self._file.fsync()
                self._fsyncs += 1
            self._active.last_lsn = self._written_lsn = self._durable_lsn = self._last_lsn
            try:
                new = self._create_segment(self._last_lsn + 1)
            except Exception as e:
                if not is_disk_full(e):
                    raise
                self._remove_stub(self._last_lsn + 1)
                raise DiskFullError(f"{self.directory}: no space left on the device for a new WAL segment") from e
            self._file.close()
            self._sealed.append(self._active)
            self._active, self._reserved_end = new, SEGMENT_HEADER_SIZE
            self._file = self._fs.open(self._active.path)
            self._planned = SEGMENT_HEADER_SIZE
        except DiskFullError:
            raise
        except Exception as e:
            self._fail(e)
            self._check_failed()
        finally:
            self._cond.notify_all()

    def _remove_stub(self, first_lsn: int) -> None:
        """Remove a segment whose creation a full disk interrupted (it must not outlive the active one)."""
        path = os.path.join(self.directory, segment_name(first_lsn))
        if self._fs.exists(path):
            self._fs.remove(path)
            self._fs.fsync_dir(self.directory)

    def _advance(self, target: int, *, sync: bool) -> None:
        """Block until records up to `target` are written (and fsync'd if `sync`). Lock held.

        This loop is the group commit: a thread that finds no write in flight writes *everything* buffered,
        one that finds no fsync in flight fsyncs *everything* written; the others wait for them."""
        topped_up = False
        while True:
            self._check_failed()
            if self._rotators and (self._written_lsn < target or (sync and self._durable_lsn < target)):
                self._cond.wait()  # a rotation is waiting for idle I/O; it will write and fsync our records
            elif self._written_lsn < target:
                if self._writing:
                    self._cond.wait()
                else:
                    self._write_buffered()
            elif sync and self._durable_lsn < target:
                if self._syncing:
                    self._cond.wait()
                elif not topped_up:
                    # Before leading an fsync, once: yield so that appenders already runnable (typically the
                    # ones the previous fsync just released) can buffer their next records, then write them
                    # too, so that this fsync covers them. Without this, groups alternate between one record
                    # and the rest (8 threads: 4 records per fsync instead of 5-6).
                    topped_up = True
                    with self._unlocked():
                        time.sleep(0)
                    if self._buf and not self._writing and not self._syncing:
                        self._write_buffered()
                else:
                    self._sync_written()
            else:
                return

    def _write_buffered(self) -> None:
        data, self._buf = self._buf, bytearray()
        upto, seg, f = self._last_lsn, self._active, self._file
        self._writing = True
        try:
            with self._unlocked():
                f.pwrite(data, seg.size)  # only this thread writes; appenders fill the next buffer meanwhile
            seg.size += len(data)
            seg.last_lsn = self._written_lsn = upto
        except BaseException as e:
            self._fail(e)
            if not isinstance(e, Exception):
                raise
        finally:
            self._writing = False
            self._cond.notify_all()

    def _sync_written(self) -> None:
        upto, f = self._written_lsn, self._file  # fsync covers everything written before it starts
        self._syncing = True
        try:
            with self._unlocked():
                f.fsync()
            self._fsyncs += 1
            self._durable_lsn = max(self._durable_lsn, upto)
        except BaseException as e:
            self._fail(e)
            if not isinstance(e, Exception):
                raise
        finally:
            self._syncing = False
            self._cond.notify_all()

    @contextmanager
    def _unlocked(self):
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            self._failed = exc
            log.error("WAL %s: I/O failed (%r); refusing further writes until it is reopened", self.directory, exc)
        self._cond.notify_all()

    def _check_failed(self) -> None:
        if self._failed is not None:
            raise WalFailedError(f"write-ahead log {self.directory} failed: {self._failed!r}") from self._failed

    def _check_usable(self) -> None:
        if self._closed:
            raise ValueError(f"write-ahead log {self.directory} is closed")
        self._check_failed()

    def _flush_loop(self) -> None:
        """Policy "batch": fsync what was written, on a fixed schedule of one tick per batch_delay_ms."""
        deadline = time.monotonic() + self._delay
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            deadline = max(deadline + self._delay, time.monotonic())  # if an fsync overran, do not burst
            with self._lock:
                if self._failed is not None:
                    return
                if self._durable_lsn < self._written_lsn:
                    try:
                        self._advance(self._written_lsn, sync=True)
                    except WalFailedError:
                        return  # already logged; appenders see the failure themselves

    def sync(self) -> None:
        """Make every record appended so far durable (write + fsync), whatever the policy."""
        with self._lock:
            self._check_usable()
            self._advance(self._last_lsn, sync=True)

    # ------------------------------------------------------------------------------------------ reading

    def replay(self, after_lsn: int = 0) -> Iterator[WalRecord]:
        """Yield every record with LSN > after_lsn, in LSN order, as of the first `next()`.

        Sees records handed to the OS (all acknowledged ones except under policy "none", whose buffer
        `sync()` flushes). Raises ValueError if records after `after_lsn` were already purged, and
        WalCorruptionError if a segment was damaged after the log was opened."""
        with self._lock:
            self._check_usable()
            segs = [_Segment(s.path, s.first_lsn, s.last_lsn, s.size) for s in self._sealed + [self._active]]
            oldest = segs[0].first_lsn
            if after_lsn < oldest - 1:
                raise ValueError(f"records {after_lsn + 1}..{oldest - 1} of {self.directory} were purged; "
                                 f"replay can start after LSN {oldest - 1} at the earliest")
            segs = [s for s in segs if s.last_lsn > after_lsn]
            pin = segs[0].first_lsn if segs else None
            if pin is not None:
                self._pins[pin] += 1
        try:
            for seg in segs:
                yield from segment_records(self._fs, seg, after_lsn)
                pin = self._move_pin(pin, seg.last_lsn + 1)
        finally:
            self._move_pin(pin, None)

    def _move_pin(self, old: int | None, new: int | None) -> int | None:
        with self._lock:
            if old is not None:
                self._pins[old] -= 1
                if self._pins[old] <= 0:
                    del self._pins[old]
            if new is not None:
                self._pins[new] += 1
        return new

    # ------------------------------------------------------------------------------------------ consumers

    def register_consumer(self, name: str) -> int:
        """Register a consumer of the log (idempotent); return the LSN it has applied.

        A new consumer starts just below the oldest record still stored, so it holds back every later purge
        until it calls `mark_applied`."""
        if not isinstance(name, str) or not name or len(name) > 128:
            raise ValueError(f"consumer name must be a non-empty string of at most 128 characters, got {name!r}")
        with self._meta_lock:
            if name not in self._consumers:
                with self._lock:
                    start = (self._sealed or [self._active])[0].first_lsn - 1
                self._save({**self._consumers, name: start})
            return self._consumers[name]

    def mark_applied(self, name: str, lsn: int, *, back: bool = False) -> None:
        """Record that consumer `name` no longer needs records with LSN <= lsn (persisted atomically). The log is
        fsync'd up to `lsn` first, so an applied LSN never points past the durable end of the log.
        `back` (repair only, logged): the mark claimed more than the consumer applied and goes back to `lsn`."""
        with self._meta_lock:
            if name not in self._consumers:
                raise KeyError(f"unknown WAL consumer {name!r}; call register_consumer first")
            current, value = self._consumers[name], as_int(lsn)
            if value is None or (value < current and not back) or value > self.last_lsn:
                raise ValueError(f"applied LSN for {name!r} must be an int in [{current}, {self.last_lsn}] "
                                 f"(it cannot go back, nor past the last LSN), got {lsn!r}")
            lsn = value
            if lsn == current:
                return
            if lsn < current:
                log.error("WAL REPAIR: %s: consumer %r set back from LSN %d to %d", self.directory, name, current, lsn)
            if lsn > self.durable_lsn:
                self.sync()
            self._save({**self._consumers, name: lsn})

    def _save(self, consumers: dict[str, int]) -> None:
        with self._lock:
            self._check_usable()
        save_consumers(self._fs, self.directory, consumers)
        self._consumers = consumers

    def purge(self) -> int:
        """Delete the oldest whole segments whose records every consumer has applied; return bytes freed. Never
        deletes the active segment nor one a running replay still reads; with no consumer, nothing."""
        with self._meta_lock:  # held throughout: a consumer registered meanwhile must not start in a victim
            if not self._consumers:
                return 0
            floor = min(self._consumers.values())
            with self._lock:
                self._check_usable()
                pinned = min(self._pins, default=self._active.first_lsn)
                n = 0
                while n < len(self._sealed) and self._sealed[n].last_lsn <= floor and \
                        self._sealed[n].first_lsn < pinned:
                    n += 1
                victims, self._sealed = self._sealed[:n], self._sealed[n:]
            for seg in victims:  # oldest first, one durable step each: a crash leaves a contiguous log
                self._fs.remove(seg.path)
                self._fs.fsync_dir(self.directory)
        if victims:
            log.info("%s: purged %d segment(s), LSNs %d..%d (every consumer has applied up to LSN %d)",
                     self.directory, len(victims), victims[0].first_lsn, victims[-1].last_lsn, floor)
        return sum(seg.size for seg in victims)

    # ------------------------------------------------------------------------------------------ state

    @property
    def last_lsn(self) -> int:
        """Highest LSN handed out (under "fsync", possibly not yet durable while its append is running)."""
        with self._lock:
            return self._last_lsn

    @property
    def durable_lsn(self) -> int:
        """Highest LSN known to be fsync'd."""
        with self._lock:
            return self._durable_lsn

    def stats(self) -> dict:
        with self._lock:
            segs = self._sealed + [self._active]
            out = {"policy": self.policy, "directory": self.directory, "segments": len(segs),
                   "bytes": sum(s.size for s in segs) + len(self._buf), "first_lsn": segs[0].first_lsn,
                   "last_lsn": self._last_lsn, "written_lsn": self._written_lsn, "durable_lsn": self._durable_lsn,
                   "fsyncs": self._fsyncs, "appends": self._appends, "buffered_bytes": len(self._buf)}
        out["consumers"] = dict(self._consumers)
        return out

    def close(self) -> None:
        """Write and fsync everything, stop the flusher, release the directory. Idempotent.

        Raises WalFailedError (once) if the log failed earlier or fails now: records may not be durable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True  # new appends are refused; running ones finish below
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        with self._lock:
            try:
                self._advance(self._last_lsn, sync=True)
            finally:
                while self._writing or self._syncing:
                    self._cond.wait()
                self._file.close()
                self._dir_lock.close()

    def __enter__(self) -> "WriteAheadLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WriteAheadLog({self.directory!r}, durability={self.policy!r}, last_lsn={self._last_lsn})"
