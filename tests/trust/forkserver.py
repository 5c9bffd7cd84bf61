"""A pre-imported process that forks one child per request, for the damage and poison matrices.

Anything that may die of SIGBUS or SIGSEGV on damaged bytes (LMDB maps data.mdb, numba kernels read mmap'd files)
runs in a child, so the test sees the child's exit status instead of dying with it; forking from one process that
imported vdb once costs milliseconds per case instead of an interpreter start and vdb's imports each time.

Requests (tests/trust/forkloop.py serves them): {"call": NAME, "kwargs": {...}, "out": PATH} starts a child that runs
children.NAME(**kwargs) and writes its JSON result to PATH (its stdout/stderr go to PATH.stdout / PATH.stderr);
{"reap": pid} waits for it. OpenMP is pinned to one thread before anything is imported.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _child(req: dict) -> int:
    out = req["out"]
    for fd, suffix in ((1, ".stdout"), (2, ".stderr")):
        f = os.open(out + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    import children
    try:
        result = getattr(children, req["call"])(**req.get("kwargs", {}))
    except BaseException:  # noqa: BLE001 - reported to the test, which fails on it
        with open(out + ".error", "w") as f:
            f.write(traceback.format_exc())
        return 3
    with open(out + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(out + ".tmp", out)
    return 0


def main() -> None:
    sys.path.insert(0, str(HERE))
    import children
    from forkloop import serve
    children.preload()
    serve(_child)


class ForkServer:
    """The test side: start the server, run children and collect their results and exit statuses."""

    def __init__(self):
        self._proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self._lock = threading.Lock()
        first = self._proc.stdout.readline()
        if not first or not json.loads(first).get("ready"):
            raise RuntimeError("the fork server did not start")

    def _ask(self, req: dict) -> dict:
        with self._lock:
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            return json.loads(self._proc.stdout.readline())

    def spawn(self, call: str, out: str | os.PathLike, **kwargs) -> int:
        """Start children.<call>(**kwargs) in a child; returns its pid (reap it with `reap`)."""
        return self._ask({"call": call, "kwargs": kwargs, "out": str(out)})["pid"]

    def reap(self, pid: int) -> int:
        """Wait for a child; returns its wait status (os.WIFSIGNALED / WTERMSIG / WEXITSTATUS apply)."""
        return self._ask({"reap": pid})["status"]

    def run(self, call: str, out: str | os.PathLike, **kwargs):
        """Run children.<call>(**kwargs) to its end: (wait status, its JSON result or None)."""
        status = self.reap(self.spawn(call, out, **kwargs))
        path = Path(out)
        result = json.loads(path.read_text()) if path.exists() else None
        return status, result

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.send_signal(signal.SIGKILL)
                self._proc.wait()


_shared: ForkServer | None = None


def shared() -> ForkServer:
    """One fork server for the whole test session (both matrices use it), stopped at exit."""
    global _shared
    if _shared is None:
        _shared = ForkServer()
        atexit.register(_shared.close)
    return _shared


def describe(status: int, out: str | os.PathLike) -> str:
    """A child's fate in words, with its traceback if it raised (for assertion messages)."""
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
    err = Path(str(out) + ".error")
    tail = err.read_text()[-3000:] if err.exists() else Path(str(out) + ".stderr").read_text()[-3000:]
    return f"exit status {os.WEXITSTATUS(status)}\n{tail}"


if __name__ == "__main__":
    main()
