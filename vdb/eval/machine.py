"""Where a measurement was taken: machine facts and the git revision, stamped on every result row."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=1)
def machine_info() -> dict:
    import faiss
    import numpy as np
    return {"host": platform.node(), "platform": platform.platform(), "cpu": _cpu_model(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "faiss": faiss.__version__}


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """`git rev-parse HEAD` of the source tree (None outside a git checkout or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
