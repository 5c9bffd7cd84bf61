"""Regenerate the checked-in gRPC stubs from proto/ (tests/service/test_stubs.py fails when they are stale).

    python tools/gen_proto.py            # writes vdb/v1/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py
    python tools/gen_proto.py --out DIR  # writes into DIR instead (the staleness test uses this)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = sorted((ROOT / "proto").rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc
    import grpc_tools
    include = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *[str(p) for p in PROTOS]]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    made = []
    for proto in PROTOS:
        stem = out / proto.relative_to(ROOT / "proto").with_suffix("")
        made += [stem.with_name(stem.name + suffix) for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT)
    for path in generate(ap.parse_args().out):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
