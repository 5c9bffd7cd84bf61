"""The serving loop both pre-imported fork servers share (forkserver.py here, tests/crash/zygote.py):
forking from one process that imported vdb once costs milliseconds per child instead of an interpreter start and
vdb's imports each time.

Protocol on stdin/stdout, one JSON object per line, after the server's {"ready": true}:
    any request without "reap"  -> {"pid": pid}; the child runs `run_child(request)` and exits with its return
    {"reap": pid}               -> {"status": the child's wait status}
The server itself must not have threads, an open database or a gRPC channel when it forks (a fork of a process
with threads is unsafe), and pins OpenMP to one thread before anything is imported.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable


def serve(run_child: Callable[[dict], int | None]) -> None:
    """Answer requests on stdin until it closes; each child exits with run_child's return (None: 0), 3 if it
    raised."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if "reap" in req:
            _, status = os.waitpid(req["reap"], 0)
            print(json.dumps({"status": status}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                code = run_child(req) or 0
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
