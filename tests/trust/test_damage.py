"""The corruption matrix (issue 11.3, 11.5, 11.7): every file kind of a collection and of a data directory,
damaged at its header, its middle and its tail, and truncated to half, then opened and asked count / get / search
/ describe through the embedded engine (and through gRPC for a representative subset), and checked with
`vdbctl check`.

Each damaged directory is a copy of one small base directory. What may happen:
- a precise error: DATA_LOSS naming the damaged file (and the byte offset where the format knows it), either for
  the whole collection (it cannot be opened: every call says why) or for the calls that read the damaged bytes;
- answers equal to those of the undamaged copy, when the damage is in bytes no answer depends on;
- never a wrong answer, never a crash (every probe runs in a forked child whose exit status is checked), and the
  other collection of the data directory ("b") always answers as before.
`vdbctl check` reports every damage it can see (exit 1, naming the file) and changes no byte of what it checks.

One limitation is asserted as it is: damage in the last record of the log is indistinguishable from a torn final
write, so that record is dropped (loudly: logged, and listed by check) and the rest is served, exactly as a copy
without that record (docs/wal_format.md, "Torn tail or corruption"; LevelDB and PostgreSQL do the same).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from forkserver import describe, shared

REC = 16         # posting record bytes at dim 8 (8-byte header + 8 code bytes)
ROW = 4 * 8 + 4  # vector row bytes at dim 8
HEADER = 4096    # file header page of vectors.f32, heads.f32, postings.dat
COLL = "collections/a"
L_SEGMENT = "wal-00000000000000000001.log"  # the base directory's one WAL segment


# -- damage primitives -----------------------------------------------------------------------------------------
def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def cut(path: Path, size: int) -> None:
    os.truncate(path, size)


def edit_record(meta_dir: Path, table: bytes, key: bytes, position: float) -> None:
    """Flip one byte of one LMDB record in place (same length), with the lmdb module itself."""
    import lmdb
    env = lmdb.open(str(meta_dir), max_dbs=4, subdir=True)
    try:
        db = env.open_db(table)
        with env.begin(write=True, db=db) as txn:
            value = bytearray(txn.get(key))
            i = min(len(value) - 1, int(len(value) * position))
            value[i] ^= 0xFF
            txn.put(key, bytes(value))
    finally:
        env.close()


def _mdb_pages_end(d: Path) -> int:
    return (d / COLL / "meta" / "data.mdb").stat().st_size


def id_key(ext_id: int) -> bytes:
    return struct.pack(">Q", ext_id)


def tree_digest(root: Path) -> dict:
    """Every file's size and content hash, and every directory: what `check` must leave exactly as it was.
    Reads only the data extents of sparse files (holes are zeros), so 64 MiB growth tails cost nothing."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = sorted(dirnames + filenames)
        for name in filenames:
            path = os.path.join(dirpath, name)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                pos = 0
                while pos < size:
                    try:
                        start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
                    except OSError:  # ENXIO: only a hole is left
                        break
                    end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
                    f.seek(start)
                    h.update(start.to_bytes(8, "little") + f.read(end - start))
                    pos = end
            out[os.path.join(rel, name)] = (size, h.hexdigest())
    return out


# -- the cases ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    damage: Callable[[Path, dict], None]
    outcome: str        # refused | calls | equal | torn | connect | any
    file: str = ""      # what every error (and check) must name
    offset: bool = False
    slow: bool = False
    grpc: bool = False


def _posting(layout: dict, which: str) -> tuple[int, int]:
    live = [(o, c) for o, c in layout["postings"] if c]
    o, c = live[len(live) // 2] if which == "middle" else max(live)
    return o, c


def _content_end(layout: dict) -> int:
    return max(o + c * REC for o, c in layout["postings"])


def _wal(d: Path, layout: dict) -> Path:
    return d / COLL / "wal" / layout["wal_segment"]


def _record(layout: dict, lsn: int) -> tuple[int, int]:
    off, _lsn, n = next(r for r in layout["wal_records"] if r[1] == lsn)
    return off, n


def _cases() -> list[Case]:
    P, V, H = f"{COLL}/postings.dat", f"{COLL}/vectors.f32", f"{COLL}/heads.f32"
    M, CJ = f"{COLL}/meta", f"{COLL}/wal/consumers.json"
    cases = [
        # postings.dat: the header is checksummed; a posting is verified when first read
        Case("postings-header", lambda d, L: flip(d / P, 8), "refused", "postings.dat", offset=True),
        Case("postings-middle", lambda d, L: flip(d / P, _posting(L, "middle")[0] + _posting(L, "middle")[1] // 2 * REC
                                                  + 9), "calls", "postings.dat", offset=True, grpc=True),
        Case("postings-tail", lambda d, L: flip(d / P, _posting(L, "last")[0] + _posting(L, "last")[1] * REC - 1),
             "calls", "postings.dat", offset=True, slow=True),
        Case("postings-half", lambda d, L: cut(d / P, _content_end(L) // 2), "refused", "postings.dat"),
        Case("postings-slack", lambda d, L: flip(d / P, _content_end(L) + 3), "equal", slow=True),
        # vectors.f32: one checksum per row, verified by every read of the row
        Case("vectors-header", lambda d, L: flip(d / V, 16), "refused", "vectors.f32", offset=True, slow=True),
        Case("vectors-middle", lambda d, L: flip(d / V, HEADER + 400 * ROW + 5), "calls", "vectors.f32",
             offset=True),
        Case("vectors-tail", lambda d, L: flip(d / V, HEADER + (L["n_rows"] - 1) * ROW + ROW - 1), "calls",
             "vectors.f32", offset=True, slow=True),
        Case("vectors-after-rows", lambda d, L: flip(d / V, HEADER + (L["n_rows"] + 120) * ROW + 3), "equal",
             slow=True),  # rows past the checkpoint are written again by the replay
        Case("vectors-half", lambda d, L: cut(d / V, HEADER + L["n_rows"] // 2 * ROW), "refused", "vectors.f32",
             slow=True),
        # heads.f32: verified whole at open
        Case("heads-header", lambda d, L: flip(d / H, 16), "refused", "heads.f32", offset=True, slow=True),
        Case("heads-middle", lambda d, L: flip(d / H, HEADER + L["n_heads"] // 2 * ROW + 5), "refused",
             "heads.f32", offset=True, grpc=True),
        Case("heads-tail", lambda d, L: flip(d / H, HEADER + L["n_heads"] * ROW - 2), "refused", "heads.f32",
             offset=True, slow=True),
        Case("heads-half", lambda d, L: cut(d / H, HEADER + L["n_heads"] // 2 * ROW), "refused", "heads.f32",
             slow=True),
        # data.mdb, records edited in place with the lmdb module
        Case("mdb-manifest", lambda d, L: edit_record(d / M, b"manifest", b"manifest", 0.5), "refused", "data.mdb"),
        Case("mdb-manifest-checksum", lambda d, L: edit_record(d / M, b"manifest", b"manifest", 0.0), "refused",
             "data.mdb", slow=True),
        Case("mdb-id-entry", lambda d, L: edit_record(d / M, b"ext2int", id_key(400), 0.0), "calls", "data.mdb",
             grpc=True),
        Case("mdb-id-entry-check", lambda d, L: edit_record(d / M, b"ext2int", id_key(700), 0.9), "calls",
             "data.mdb", slow=True),
        Case("mdb-payload", lambda d, L: edit_record(d / M, b"payloads", id_key(400), 0.6), "calls", "data.mdb"),
        Case("mdb-payload-header", lambda d, L: edit_record(d / M, b"payloads", id_key(399), 0.0), "calls",
             "data.mdb", slow=True),
        # data.mdb as a file: LMDB's meta pages at the head, tree pages after; truncation must never SIGBUS
        Case("mdb-file-header", lambda d, L: flip(d / M / "data.mdb", 20), "refused", "meta"),
        Case("mdb-file-middle", lambda d, L: flip(d / M / "data.mdb", _mdb_pages_end(d) // 2),
             "any", "data.mdb", slow=True),
        Case("mdb-file-tail", lambda d, L: flip(d / M / "data.mdb", _mdb_pages_end(d) - 100),
             "any", "data.mdb", slow=True),
        Case("mdb-half", lambda d, L: cut(d / M / "data.mdb", _mdb_pages_end(d) // 2), "refused",
             "data.mdb"),
        Case("mdb-empty", lambda d, L: cut(d / M / "data.mdb", 0), "refused", "data.mdb"),
        Case("mdb-lock-file", lambda d, L: cut(d / M / "lock.mdb", 10), "equal", slow=True),
        # the WAL: LSN 1 is covered by the checkpoint, 2..4 are not
        Case("wal-header", lambda d, L: flip(_wal(d, L), 16), "refused", L_SEGMENT, offset=True, slow=True),
        Case("wal-covered-record", lambda d, L: flip(_wal(d, L), _record(L, 1)[0] + 17 + _record(L, 1)[1] // 2),
             "equal"),
        Case("wal-middle-record", lambda d, L: flip(_wal(d, L), _record(L, 3)[0] + 17 + 3), "refused", L_SEGMENT,
             offset=True, grpc=True),
        Case("wal-middle-length", lambda d, L: flip(_wal(d, L), _record(L, 2)[0] + 5), "refused", L_SEGMENT,
             offset=True, slow=True),
        Case("wal-tail", lambda d, L: flip(_wal(d, L), _wal(d, L).stat().st_size - 1), "torn", L_SEGMENT),
        Case("wal-half", lambda d, L: cut(_wal(d, L), _wal(d, L).stat().st_size // 2), "refused", L_SEGMENT,
             offset=True, slow=True),
        Case("wal-cut-to-header", lambda d, L: cut(_wal(d, L), 10), "refused", L_SEGMENT),
        Case("wal-empty", lambda d, L: cut(_wal(d, L), 0), "refused", L_SEGMENT, slow=True),
        # consumers.json: which LSN the index has applied (what the log may purge)
        Case("consumers-middle", lambda d, L: flip(d / CJ, 20), "refused", "consumers.json"),
        Case("consumers-half", lambda d, L: cut(d / CJ, (d / CJ).stat().st_size // 2), "refused", "consumers.json",
             slow=True),
        Case("consumers-ahead", lambda d, L: (d / CJ).write_text('{"consumers": {"index": 9}, "version": 1}'),
             "refused", "consumers.json"),
        # catalog.json: without it no collection can be named
        Case("catalog-header", lambda d, L: flip(d / "catalog.json", 0), "connect", "catalog.json", slow=True),
        Case("catalog-middle", lambda d, L: flip(d / "catalog.json", 30), "connect", "catalog.json"),
        Case("catalog-tail", lambda d, L: flip(d / "catalog.json", (d / "catalog.json").stat().st_size - 3),
             "connect", "catalog.json", slow=True),
        Case("catalog-half", lambda d, L: cut(d / "catalog.json", (d / "catalog.json").stat().st_size // 2),
             "connect", "catalog.json", slow=True),
        Case("catalog-removed", lambda d, L: (d / "catalog.json").unlink(), "connect", "catalog.json"),
        # LOCK files: their bytes are a pid for humans; no answer depends on them
        Case("lock-garbage", lambda d, L: [(d / p).write_bytes(b"\xff\xfe" * 64) for p in
                                           ("LOCK", f"{COLL}/LOCK", f"{COLL}/wal/LOCK")], "equal"),
        Case("lock-truncated", lambda d, L: [cut(d / p, 0) for p in ("LOCK", f"{COLL}/LOCK")], "equal",
             slow=True),
        Case("lock-is-a-directory", lambda d, L: ((d / COLL / "LOCK").unlink(), (d / COLL / "LOCK").mkdir()),
             "refused", "LOCK", slow=True),
    ]
    for name in ("state", "int2ext", "directory", "quantizer", "head_index", "pending"):
        cases.append(Case(f"mdb-array-{name}", lambda d, L, n=name: edit_record(d / M, b"arrays", n.encode(), 0.7),
                          "refused", "data.mdb", slow=name not in ("state", "directory")))
    return cases


CASES = _cases()
assert len({c.id for c in CASES}) == len(CASES)


def _params(cases):
    return [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in cases]


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fork():
    return shared()


@pytest.fixture(scope="module")
def base(tmp_path_factory, fork):
    root = tmp_path_factory.mktemp("damage")
    status, layout = fork.run("build_base", root / "build.json", path=str(root / "base"))
    assert status == 0, describe(status, root / "build.json")
    reference = _probe(fork, _copy(root / "base", root / "reference"), "probe")
    torn = _copy(root / "base", root / "torn")  # what serving the log without its last record answers
    cut(_wal(torn, layout), layout["wal_records"][-1][0])
    return {"root": root, "layout": layout, "reference": reference, "torn": _probe(fork, torn, "probe")}


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True)
    return dst


def _probe(fork, path: Path, call: str) -> dict:
    out = path.parent / f"{path.name}.{call}.json"
    status, result = fork.run(call, out, path=str(path))
    assert status == 0, f"{call} over {path.name}: {describe(status, out)}"
    return result


def _damaged(base, case: Case, api: str) -> Path:
    d = _copy(base["root"] / "base", base["root"] / f"{case.id}-{api}")
    case.damage(d, base["layout"])
    return d


# -- what each outcome means -------------------------------------------------------------------------------
def _assert_precise(answer, case: Case, where: str) -> None:
    assert answer[0] == "DataLossError" and answer[1] == "DATA_LOSS", f"{where}: {answer}"
    assert case.file in answer[2], f"{where}: the error does not name {case.file}: {answer[2]}"
    if case.offset:
        assert "offset" in answer[2], f"{where}: the error does not give the offset: {answer[2]}"
    assert "\n" not in answer[2]


def _assert_outcome(got: dict, reference: dict, torn: dict, case: Case, api: str) -> None:
    if case.outcome == "connect":
        _assert_precise(got.get("connect", ["opened"]), case, f"{api} connect")
        return
    assert "connect" not in got, f"{api}: the data directory did not open: {got['connect']}"
    for key, want in reference.items():
        if key.startswith("b.") or key in ("problems", "check"):
            continue
        answer = got[key]
        where = f"{api} {key}"
        if case.outcome == "equal":
            assert answer == want and not got["problems"], f"{where}: {answer} != {want}; {got['problems']}"
        elif case.outcome == "torn":
            assert answer == torn[key], f"{where}: {answer} != {torn[key]}"
        elif case.outcome == "refused":
            _assert_precise(answer, case, where)
        else:  # calls / any: the calls that read the damaged bytes fail precisely, the others answer as before
            if answer != want:
                _assert_precise(answer, case, where)
    if case.outcome == "calls":
        assert any(got[k] != reference[k] for k in reference if k.startswith("a.")), \
            f"{api}: no call read the damaged bytes; the case does not test what it says"
    for key, want in reference.items():  # the other collection of the directory serves as before
        if key.startswith("b."):
            assert got[key] == want, f"{api} {key} (an undamaged collection): {got[key]} != {want}"


# -- the matrix ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params(CASES))
def test_damage_is_reported_precisely_or_changes_no_answer(base, fork, case):
    d = _damaged(base, case, "embedded")
    before = tree_digest(d)
    out = d.parent / f"{case.id}.check.json"
    status, result = fork.run("check_cli", out, path=str(d))
    assert status == 0, f"vdbctl check: {describe(status, out)}"
    assert tree_digest(d) == before, "vdbctl check changed the directory it checked"
    printed, errors = Path(f"{out}.stdout").read_text(), Path(f"{out}.stderr").read_text()
    assert "Traceback" not in errors, errors
    assert printed or case.outcome == "connect", f"vdbctl check printed no report (exit {result['exit']}): {errors}"
    _assert_check(case, result["exit"], printed, errors)
    got = _probe(fork, d, "probe")
    _assert_outcome(got, base["reference"], base["torn"], case, "embedded")
    if case.outcome in ("refused", "calls"):  # and the running database's own check reports it, never raises
        assert got["check"][0] == "ok", f"Database.check(): {got['check']}"
        a = next(r for r in got["check"][1] if r["collection"] == "a")
        assert not a["ok"] and any(case.file in v for v in a["violations"]), a


def _assert_check(case: Case, code: int, printed: str, errors: str) -> None:
    if case.outcome == "connect":
        assert code == 1 and case.file in errors, (code, errors)
        return
    reports = json.loads(printed)
    a = next(r for r in reports if r["collection"] == "a")
    b = next(r for r in reports if r["collection"] == "b")
    assert b["ok"], b
    # every live row of the base is in a posting: no damage may be reported as rows lost from the postings
    assert not any("in no posting" in v for v in a["violations"]), a["violations"]
    if case.outcome == "equal":
        assert code == 0 and a["ok"], a
    elif case.outcome == "torn":
        assert code == 0 and any(case.file in n and "truncate" in n for n in a["notes"]), a
    elif case.outcome == "any":
        assert (code == 0) == a["ok"], a
    else:
        assert code == 1 and not a["ok"], a
        assert any(case.file in v for v in a["violations"]), a["violations"]


@pytest.mark.parametrize("case", _params([c for c in CASES if c.grpc]))
def test_damage_over_grpc_is_data_loss_and_the_rest_serves(base, fork, case):
    d = _damaged(base, case, "grpc")
    got = _probe(fork, d, "probe_grpc")
    _assert_outcome(got, base["reference"], base["torn"], case, "gRPC")


def test_the_flip_that_made_lmdb_sigbus_is_data_loss(base, fork):
    """Found by the sweep below: this byte of a payload leaf page sent LMDB's cursor (and py-lmdb's pre-fault of
    the value) past the end of data.mdb, and the process died of SIGBUS, in `vdbctl check` and in a server
    alike. The mapping past the end now reads as zeros (storage/lmdbenv.py TailGuard)."""
    case = Case("mdb-page-19-78028", lambda d, L: flip(d / COLL / "meta" / "data.mdb", 19 * 4096 + 204), "any",
                "data.mdb")
    test_damage_is_reported_precisely_or_changes_no_answer(base, fork, case)


@pytest.mark.slow
@pytest.mark.parametrize("where", [0.05, 0.5, 0.95])
def test_a_flipped_byte_on_any_page_of_data_mdb_is_never_a_wrong_answer(base, fork, where):
    """LMDB has no page checksums: a flip in a tree page is caught by the record checksums, by LMDB's own
    structure checks, or lands in bytes no answer reads; it must never crash the process or change an answer."""
    size = (base["root"] / "base" / COLL / "meta" / "data.mdb").stat().st_size
    failures = []
    for page in range(size // 4096):
        offset = page * 4096 + int(4096 * where)
        case = Case(f"mdb-page-{page}-{offset}", lambda d, L, o=offset: flip(d / COLL / "meta" / "data.mdb", o),
                    "any", "data.mdb")
        try:
            test_damage_is_reported_precisely_or_changes_no_answer.__wrapped__(base, fork, case) \
                if hasattr(test_damage_is_reported_precisely_or_changes_no_answer, "__wrapped__") else \
                test_damage_is_reported_precisely_or_changes_no_answer(base, fork, case)
        except Exception as e:  # noqa: BLE001 - every page is tried; all findings are reported together
            failures.append(f"page {page} offset {offset}: {type(e).__name__}: {str(e)[:400]}")
    assert not failures, "\n".join(failures)
