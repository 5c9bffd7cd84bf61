"""The checked-in stubs must equal what tools/gen_proto.py generates from proto/ now."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from gen_proto import generate  # noqa: E402


def test_generated_stubs_are_up_to_date(tmp_path):
    fresh = generate(tmp_path)
    assert fresh
    for path in fresh:
        checked_in = ROOT / path.relative_to(tmp_path)
        assert checked_in.exists(), f"{checked_in} is missing: run python tools/gen_proto.py"
        assert checked_in.read_bytes() == path.read_bytes(), f"{checked_in} is stale: run python tools/gen_proto.py"
