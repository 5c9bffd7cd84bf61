"""Memory of this process while something runs: peak RssAnon sampled on a thread, and cgroup v1 helpers.

RssAnon (heap, not file pages) is what the issue's "anonymous memory" means; the peak is sampled every few
milliseconds, so a spike shorter than that can be missed (VmHWM, the kernel's own peak, counts file pages too and
is reported beside it).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM", "VmLck"):
            out[key] = int(value.split()[0]) * 1024
    return out


class PeakAnon:
    """with PeakAnon() as p: ...; p.peak is the largest RssAnon seen (bytes)."""

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.peak = every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status()["RssAnon"])
            time.sleep(self.every_s)

    def __enter__(self) -> "PeakAnon":
        self.peak = status()["RssAnon"]
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status()["RssAnon"])


class MemCgroup:
    """A cgroup v1 memory group of our own (limit counts anonymous memory and page cache)."""

    def __init__(self, name: str, limit_bytes: int):
        self.path = CGROUP_V1 / name
        self.path.mkdir(exist_ok=True)
        (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        self.reset()

    def reset(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")
        (self.path / "memory.failcnt").write_text("0")
        self._kills0 = self._kills()  # the kernel's OOM-kill count of a group only grows

    def _kills(self) -> int:
        oom = (self.path / "memory.oom_control").read_text()
        return int(oom.split("oom_kill ")[1].split()[0]) if "oom_kill " in oom else 0

    def preexec(self):
        """For subprocess.Popen(preexec_fn=...): the child joins the group before it execs."""
        procs = self.path / "cgroup.procs"
        return lambda: procs.write_text(str(os.getpid()))

    def report(self) -> dict:
        def read(name: str) -> int:
            return int((self.path / name).read_text().split()[0])
        return {"limit_bytes": read("memory.limit_in_bytes"), "max_usage_bytes": read("memory.max_usage_in_bytes"),
                "failcnt": read("memory.failcnt"), "oom_kills": self._kills() - self._kills0}

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass
