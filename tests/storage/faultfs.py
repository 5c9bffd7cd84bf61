"""An in-memory file system that forgets what was not made durable (after LevelDB's fault-injection Env).

It implements the port of storage/wal/fs.py and remembers, for every file, its content as of the last
`fsync`, and for every directory, the names as of the last `fsync_dir`. `crash()` then does what a power
loss does: each file goes back to its fsync'd content, and names created, renamed or removed since their
directory's last fsync revert. Tests use it to prove that everything the WAL acknowledged survives and
that nothing else is needed for recovery to succeed.

Simplifications, all on the side of the WAL: directories are durable as soon as they are created, and
`fsync` of a file covers exactly the bytes written before it was called. `crash(rng)` can also keep a
random prefix of each file's un-fsync'd appended bytes, which is how torn writes look after a real crash.
After `crash()`, handles opened before it fail with EIO, as the dead process's would. Threads of the
dead process may still run: `crash(restart=False)` keeps every call failing with EIO until `restart()`, so
that a test can let those threads die before it opens the log again.
"""
from __future__ import annotations

import errno
import os
import random
import threading
import time

from storage.errors import LockedError


class _Node:
    """One inode: current bytes, and the bytes (and version) that the last fsync made durable."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reserved = 0  # bytes allocated ahead (File.reserve); with the data, what the node occupies
        self.version = 0
        self.synced = b""
        self.synced_version = 0


class FaultyFile:
    def __init__(self, fs: "FaultyFS", path: str, node: _Node):
        self.path, self._fs, self._node, self._gen, self._closed = path, fs, node, fs.generation, False

    def _check(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: file is closed")
        if self._gen != self._fs.generation or self._fs.down:
            raise OSError(errno.EIO, "the file system crashed since this file was opened", self.path)

    def pwrite(self, data, offset: int) -> None:
        data = bytes(data)
        with self._fs.lock_:
            self._check()
            node = self._node
            self._fs.charge(node, offset + len(data))
            if len(node.data) < offset:
                node.data.extend(b"\0" * (offset - len(node.data)))
            node.data[offset:offset + len(data)] = data
            node.version += 1

    def fsync(self) -> None:
        fs = self._fs
        with fs.lock_:
            self._check()
            if fs.fail_fsync:
                raise OSError(errno.EIO, "injected fsync failure", self.path)
            version, snapshot = self._node.version, bytes(self._node.data)
        if fs.fsync_delay:
            time.sleep(fs.fsync_delay)  # a disk flush takes time: concurrent appenders pile up meanwhile
        if fs.fsync_hook is not None:
            fs.fsync_hook()  # a test holds the flush here, deterministically
        with fs.lock_:
            self._check()  # a crash during the flush means the flush never completed
            if version > self._node.synced_version:
                self._node.synced, self._node.synced_version = snapshot, version
            fs.fsyncs += 1

    def reserve(self, offset: int, length: int) -> None:
        with self._fs.lock_:
            self._check()
            self._fs.charge(self._node, offset + length, reserve=True)

    def truncate(self, length: int) -> None:
        with self._fs.lock_:
            self._check()
            del self._node.data[length:]
            self._node.version += 1

    def size(self) -> int:
        with self._fs.lock_:
            self._check()
            return len(self._node.data)

    def close(self) -> None:
        self._closed = True


class _FaultyLock:
    def __init__(self, fs: "FaultyFS", directory: str):
        self._fs, self._dir, self._gen = fs, directory, fs.generation

    def close(self) -> None:
        with self._fs.lock_:
            if self._gen == self._fs.generation:  # after a crash the lock died with its process
                self._fs.locked.discard(self._dir)
            self._gen = -1


class FaultyFS:
    def __init__(self, *, fsync_delay: float = 0.0, capacity: int | None = None):
        self.lock_ = threading.RLock()
        self.capacity = capacity  # bytes; None: unlimited. Set it lower or higher at any time (a full disk)
        self.files: dict[str, _Node] = {}
        self.durable: dict[str, _Node] = {}   # the names as of each directory's last fsync_dir
        self.dirs: set[str] = set()
        self.locked: set[str] = set()
        self.generation = 0
        self.down = False
        self.fsync_delay, self.fail_fsync = fsync_delay, False
        self.fsync_hook = None  # called inside every fsync, outside the lock (tests block flushes with it)
        self.fsyncs = self.dir_fsyncs = 0

    def used(self) -> int:
        return sum(max(len(n.data), n.reserved) for n in self.files.values())

    def charge(self, node: "_Node", end: int, *, reserve: bool = False) -> None:
        """Account for `node` growing to `end` bytes; ENOSPC (as the kernel would) when over capacity."""
        grow = max(0, end - max(len(node.data), node.reserved))
        if self.capacity is not None and grow and self.used() + grow > self.capacity:
            if reserve:
                from storage.errors import DiskFullError
                raise DiskFullError(f"no space left on the (faulty) device to reserve {grow} bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        if reserve:
            node.reserved = max(node.reserved, end)

    def _up(self) -> None:
        if self.down:
            raise OSError(errno.EIO, "the file system is down (crashed, not restarted)")

    @staticmethod
    def _norm(path) -> str:
        return os.path.normpath(os.fspath(path))

    def _node(self, path: str) -> _Node:
        self._up()
        node = self.files.get(self._norm(path))
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        return node

    # --- the port
    def makedirs(self, path) -> None:
        with self.lock_:
            self._up()
            p = self._norm(path)
            while p not in self.dirs and p not in ("/", "."):
                self.dirs.add(p)
                p = os.path.dirname(p)

    def listdir(self, path) -> list[str]:
        with self.lock_:
            self._up()
            d = self._norm(path)
            if d not in self.dirs:
                raise FileNotFoundError(errno.ENOENT, "no such directory", path)
            return sorted(os.path.basename(p) for p in list(self.files) + list(self.dirs)
                          if os.path.dirname(p) == d and p != d)

    def exists(self, path) -> bool:
        with self.lock_:
            self._up()
            return self._norm(path) in self.files or self._norm(path) in self.dirs

    def size(self, path) -> int:
        with self.lock_:
            return len(self._node(path).data)

    def read(self, path, offset: int = 0, length: int | None = None) -> bytes:
        with self.lock_:
            data = self._node(path).data
            return bytes(data[offset:] if length is None else data[offset:offset + length])

    def create(self, path) -> FaultyFile:
        with self.lock_:
            self._up()
            p = self._norm(path)
            if p in self.files:
                raise FileExistsError(errno.EEXIST, "file exists", path)
            if os.path.dirname(p) not in self.dirs:
                raise FileNotFoundError(errno.ENOENT, "no such directory", path)
            self.files[p] = _Node()
            return FaultyFile(self, p, self.files[p])

    def open(self, path) -> FaultyFile:
        with self.lock_:
            return FaultyFile(self, self._norm(path), self._node(path))

    def rename(self, src, dst) -> None:
        with self.lock_:
            node = self._node(src)
            del self.files[self._norm(src)]
            self.files[self._norm(dst)] = node

    def remove(self, path) -> None:
        with self.lock_:
            self._node(path)
            del self.files[self._norm(path)]

    def fsync_dir(self, path) -> None:
        with self.lock_:
            self._up()
            d = self._norm(path)
            for p in [p for p in self.durable if os.path.dirname(p) == d]:
                del self.durable[p]
            self.durable.update((p, n) for p, n in self.files.items() if os.path.dirname(p) == d)
            self.dir_fsyncs += 1

    def lock(self, directory) -> _FaultyLock:
        with self.lock_:
            self._up()
            d = self._norm(directory)
            if d in self.locked:
                raise LockedError(f"cannot lock {directory}: it is in use")
            self.locked.add(d)
            return _FaultyLock(self, d)

    # --- fault injection
    def crash(self, rng: random.Random | None = None, *, restart: bool = True) -> None:
        """Lose everything not durable. With `rng`, keep a random prefix of each file's un-fsync'd tail.
        With `restart=False`, every call fails until `restart()`."""
        with self.lock_:
            self.down = not restart
            self.generation += 1
            for node in {id(n): n for n in list(self.files.values()) + list(self.durable.values())}.values():
                keep = node.synced
                grown = len(node.data) > len(keep) and node.data[:len(keep)] == keep
                if rng is not None and grown:
                    keep = bytes(node.data[:len(keep) + rng.randrange(len(node.data) - len(keep) + 1)])
                node.data, node.synced = bytearray(keep), keep
                node.version = node.synced_version = node.version + 1
            self.files = dict(self.durable)
            self.locked.clear()

    def restart(self) -> None:
        with self.lock_:
            self.down = False

    def process_crash(self) -> None:
        """The process dies, the OS does not: data handed to it stays; handles and locks die."""
        with self.lock_:
            self.generation += 1
            self.locked.clear()

    def corrupt(self, path, offset: int, xor: int = 0x5A) -> None:
        """Flip bits of one byte in place (and durably: it models damage on the medium)."""
        with self.lock_:
            node = self._node(path)
            node.data[offset] ^= xor
            node.synced = bytes(node.data)
