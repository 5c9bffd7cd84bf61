"""Named crash points for crash tests (faiss's `crash_at`, LevelDB's fault injection).

Long operations call `crashpoint("name")` at their dangerous moments. With the environment variable
VDB_CRASH_AT="name:N" the process SIGKILLs itself the N-th time it passes that point; otherwise the call
costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

_TARGET, _COUNT = "", 1
_hits: dict[str, int] = {}


def arm(spec: str) -> None:
    """Set the crash point ("name:N"); "" disarms. Forked test children call this after fork."""
    global _TARGET, _COUNT
    name, _, count = spec.partition(":")
    _TARGET, _COUNT = name, int(count or 1)
    _hits.clear()


arm(os.environ.get("VDB_CRASH_AT", ""))


def crashpoint(name: str) -> None:
    if not _TARGET or name != _TARGET:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= _COUNT:
        os.kill(os.getpid(), signal.SIGKILL)
