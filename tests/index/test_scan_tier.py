"""The scan tier (storage/scan_codes.py, index/scancodes.py, index/tierscan.py): PQ codes of every posting record
held in RAM, so a query served from disk reads only its re-rank rows. The file round-trips, the ADC kernel
computes the distances to the decoded vectors, the search keeps the INT8 path's recall, a posting changed since
the codes were written is read from disk instead, and damaged bytes are a CorruptionError, never an answer."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from index import BuildParams, FlatIndex, SpannIndex, recall_at_k
from index.tierbuild import scan_codes_index
from index.mutable import MutableSpannIndex
from index.scancodes import padded_dim
from storage import CorruptionError, IndexDir
from storage.scan_codes import TABLE_DTYPE, ScanCodeFile, write_scan_codes

CODE_BYTES = 16  # the 32-d test vectors: 2 dimensions per sub-quantizer (8 bytes miss the target recall)


@pytest.fixture(scope="module")
def tiered(tmp_path_factory, built_l2):
    """A copy of the shared l2 index with scan codes (module-wide, read-only)."""
    path = shutil.copytree(built_l2, tmp_path_factory.mktemp("tier") / "l2")
    scan_codes_index(path, CODE_BYTES)
    return path


def _decoded(codes: ScanCodeFile, qz, dim: int, pid: int) -> np.ndarray:
    """The vectors the entries of posting `pid` decode to, in numpy (reference point + PQ residual)."""
    s, n = int(codes.start[pid]), int(codes.count[pid])
    m, _, dsub = codes.codebook.shape
    resid = np.concatenate([codes.codebook[j][codes.codes[s:s + n, j]] for j in range(m)], axis=1)
    base = qz.decode(np.asarray(codes.base[pid:pid + 1]))[0]
    return resid[:, :dim] + base


def test_the_file_round_trips_its_arrays(tmp_path):
    rng = np.random.default_rng(0)
    n_post, counts = 5, np.array([3, 0, 7, 1, 4])
    table = np.zeros(n_post, TABLE_DTYPE)
    table["start"] = np.concatenate([[0], np.cumsum(counts)[:-1]])
    table["count"], table["src_crc"], table["src_count"] = counts, rng.integers(0, 2**32, n_post), counts + 1
    n = int(counts.sum())
    arrays = (rng.standard_normal((4, 256, 3)).astype(np.float32), rng.integers(-128, 128, (n_post, 12), np.int8),
              rng.integers(0, 10**6, n, np.uint32), rng.integers(0, 127, n, np.uint8),
              rng.standard_normal(n).astype(np.float32), rng.integers(0, 256, (n, 4), np.uint8))
    write_scan_codes(tmp_path / "scan.pq", 12, table, *arrays)
    f = ScanCodeFile(tmp_path / "scan.pq")
    assert (f.dim, f.n_postings, f.n_entries, f.code_bytes) == (12, n_post, n, 4)
    for name in ("start", "count", "src_crc", "src_count"):
        assert np.array_equal(f.table[name], table[name])
    for got, want in zip((f.codebook, f.base, f.rows, f.versions, f.terms, f.codes), arrays):
        assert np.array_equal(got, want)
    assert f.verify() == []
    assert not list(tmp_path.glob(".scan.pq.tmp-*"))  # published by rename, nothing left behind


def test_adc_estimates_are_the_distances_to_the_decoded_vectors(tiered, queries):
    with SpannIndex.open(tiered, memory_budget_mb=64) as idx:
        tier = idx.tier
        assert tier is not None and tier.codes.code_bytes == CODE_BYTES
        assert tier.dpad == padded_dim(idx.dim, CODE_BYTES)
        for q in queries[:5]:
            pids = idx.probe(q[None, :], _params(8))[0]
            pids = pids[pids >= 0]
            rows, est, _ = tier.estimates(pids, q, True, idx.state, np.zeros(0, np.uint8), 10_000)
            expect = {}
            for p in pids:
                d = ((_decoded(tier.codes, idx.quantizer, idx.dim, int(p)) - q) ** 2).sum(1)
                for r, v in zip(tier.codes.rows[tier.start[p]: tier.start[p] + tier.count[p]], d):
                    expect[int(r)] = min(v, expect.get(int(r), np.inf))  # a replica keeps its smaller estimate
            assert sorted(rows.tolist()) == sorted(expect)  # every row once
            want = np.array([expect[int(r)] for r in rows])
            assert np.allclose(est, want, rtol=1e-3, atol=1e-2 * float(np.median(want)))
            assert np.all(np.diff(est) >= 0)


def test_the_tier_reads_only_rows_and_keeps_the_int8_recall(tiered, base, queries):
    truth, _ = FlatIndex(base, "l2").search(queries, 10)
    with SpannIndex.open(tiered, memory_budget_mb=64) as t, \
            SpannIndex.open(tiered, memory_budget_mb=64, scan_tier=False) as d:
        assert t.tier is not None and d.tier is None and t.tier.stale_postings() == 0
        for eps in (0.0, 0.2):
            a, da = t.search(queries, 10, nprobe=8, rerank_eps=eps)
            b, _ = d.search(queries, 10, nprobe=8, rerank_eps=eps)
            assert recall_at_k(a, truth, 10) >= recall_at_k(b, truth, 10) - 0.03
            assert (a >= 0).all() and np.isfinite(da).all()
        io = t.disk.io_stats()
        assert io["postings"]["reads"] == 0 and io["rows"]["reads"] > 0
        # the distances returned are exact: they come from the float32 rows
        exact = ((base[a[:3]] - queries[:3, None, :]) ** 2).sum(-1)
        assert np.allclose(da[:3], exact, rtol=1e-4)


def test_the_tier_is_left_out_when_it_does_not_fit_the_budget(tiered, queries):
    with SpannIndex.open(tiered, memory_budget_mb=0.01) as idx:
        assert idx.tier is None
        ids, _ = idx.search(queries[:5], 10, nprobe=4)
        assert (ids >= 0).all()


def test_postings_changed_after_encoding_are_read_from_disk(tmp_path, tiered, base, queries):
    path = shutil.copytree(tiered, tmp_path / "m")
    near = queries[:20] + np.float32(0.01)  # new rows right at the queries: they must be found
    gone = FlatIndex(base, "l2").search(queries[20:40], 1)[0][:, 0]  # each query's nearest row, deleted
    idx = MutableSpannIndex.open_writable(path)
    rows = idx.add_rows(near, np.arange(10**6, 10**6 + len(near)))
    idx.insert(rows)
    idx.delete_rows(gone)
    with idx.maint_lock, idx.lock:
        fields, arrays = idx.snapshot()
        idx.commit({**idx.manifest, **fields}, arrays)
    idx.close()
    with SpannIndex.open(path, memory_budget_mb=64) as t:
        assert 0 < t.tier.stale_postings() < t.n_heads
        ids, _ = t.search(queries[:40], 10, nprobe=8)
        assert t.disk.io_stats()["postings"]["reads"] > 0
    assert np.array_equal(ids[:20, 0], np.arange(10**6, 10**6 + 20))
    assert not np.isin(gone, ids[20:]).any()


@pytest.mark.parametrize("section", ["codes", "codebook", "table", "layout"])
def test_damaged_scan_codes_are_a_corruption_error_and_vdbctl_check_lists_them(tmp_path, tiered, queries, section):
    path = shutil.copytree(tiered, tmp_path / section)
    f = ScanCodeFile(path / "scan.pq")
    offset = {"codes": f.codes.ctypes.data, "codebook": f.codebook.ctypes.data, "table": f.table.ctypes.data,
              "layout": f.buffer.ctypes.data + 4096 + 3}[section] - f.buffer.ctypes.data
    f.close()
    with open(path / "scan.pq", "r+b") as fh:
        fh.seek(offset)
        old = fh.read(2)
        fh.seek(offset)
        fh.write(bytes(b ^ 0x5A for b in old))
    with pytest.raises(CorruptionError) as e:
        SpannIndex.open(path, memory_budget_mb=64)
    assert "scan.pq" in str(e.value)
    with SpannIndex.open(path) as idx:  # the mmap path does not use the tier and still answers
        assert (idx.search(queries[:3], 10)[0] >= 0).all()
        violations, _ = idx.verify()
    assert any("scan.pq" in v for v in violations)
    # and so does the disk path told to leave the tier out (the way past damaged codes until they are
    # encoded again; its calibration check read their headers and refused, found by review)
    with SpannIndex.open(path, memory_budget_mb=64, scan_tier=False) as idx:
        assert idx.tier is None and (idx.search(queries[:3], 10)[0] >= 0).all()


def test_a_truncated_scan_code_file_is_a_corruption_error(tmp_path, tiered):
    path = shutil.copytree(tiered, tmp_path / "t")
    size = (path / "scan.pq").stat().st_size
    with open(path / "scan.pq", "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(CorruptionError):
        SpannIndex.open(path, memory_budget_mb=64)


def test_an_index_without_scan_codes_checks_clean_and_serves_from_disk(built_l2, queries):
    d = IndexDir.open(built_l2)
    try:
        assert d.open_scan_codes() is None
    finally:
        d.close()
    with SpannIndex.open(built_l2, memory_budget_mb=64) as idx:
        assert idx.tier is None and idx.verify()[0] == []


def _params(nprobe: int):
    from index.types import SearchParams
    return SearchParams(nprobe=nprobe).resolved(10)


def test_a_build_with_scan_codes_calibrates_nprobe_through_the_tier(tmp_path, base, queries):
    from index import BuildParams, build_index
    summary = build_index(base[:3000], tmp_path / "b", params=BuildParams(head_ratio=0.02, seed=1,
                                                                          scan_code_bytes=CODE_BYTES))
    assert summary["scan_codes"]["reaches_target"]
    with SpannIndex.open(tmp_path / "b", memory_budget_mb=64) as t, SpannIndex.open(tmp_path / "b") as m:
        cal = t.manifest["tier_calibration"]
        assert cal["curve"] and cal["target_recall"] == 0.9 and t.scan_tier_info()["serving"]
        assert t.default_nprobe() == cal["nprobe"] and m.default_nprobe() == m.calibration["nprobe"]
        truth, _ = FlatIndex(base[:3000], "l2").search(queries, 10)
        assert recall_at_k(t.search(queries, 10)[0], truth, 10) >= 0.85  # the calibration's target, less noise


def test_a_tier_whose_narrow_rerank_misses_the_target_calibrates_a_wider_one(tmp_path, base, queries):
    """Automatic code bytes (dim / 4 = 8 here) cap this tier at recall ~0.897 with the default rerank_eps 0.05,
    below the build's 0.9 at any nprobe (the default search probed every posting and returned ~0.896). Its
    calibration widens the re-rank until the curve reaches the target, and the search uses that width."""
    from index import BuildParams, build_index
    from index.types import DISK_TIER_RERANK_EPS, TIER_RERANK_EPS_LADDER, scan_code_bytes
    summary = build_index(base[:3000], tmp_path / "b", params=BuildParams(head_ratio=0.02, seed=1,
                                                                          scan_code_bytes=-1))
    tier = summary["scan_codes"]
    assert tier["code_bytes"] == scan_code_bytes(base.shape[1]) == base.shape[1] // 4
    cal = tier["calibration"]
    assert cal["eps_tried"][0][0] == DISK_TIER_RERANK_EPS and cal["eps_tried"][0][1] < 0.9  # the narrow one misses
    assert tier["reaches_target"] and cal["rerank_eps"] in TIER_RERANK_EPS_LADDER[1:]
    with SpannIndex.open(tmp_path / "b", memory_budget_mb=64) as t:
        assert t.tier is not None and t.scan_tier_info()["serving"]
        assert t.tier_rerank_eps() == t.tier.auto_rerank_eps == cal["rerank_eps"]
        assert t.default_nprobe() == cal["nprobe"] < t.head_count()
        truth, _ = FlatIndex(base[:3000], "l2").search(queries, 10)
        assert recall_at_k(t.search(queries, 10)[0], truth, 10) >= 0.9


def test_a_tier_whose_calibration_misses_the_target_does_not_serve(tmp_path, base, queries):
    """Two code bytes for 32 dimensions: no re-rank width of the ladder reaches the build's 0.9, so the INT8 path
    answers with its own calibration and info says why."""
    from index import BuildParams, build_index
    from index.types import TIER_RERANK_EPS_LADDER
    build_index(base[:3000], tmp_path / "b", params=BuildParams(head_ratio=0.02, seed=1))
    tier = scan_codes_index(tmp_path / "b", 2)
    assert not tier["reaches_target"] and "does not reach the target recall 0.9" in tier["not_serving"]
    assert [eps for eps, _ in tier["calibration"]["eps_tried"]] == list(TIER_RERANK_EPS_LADDER)
    with SpannIndex.open(tmp_path / "b", memory_budget_mb=64) as t:
        info = t.scan_tier_info()
        assert t.tier is None and info["present"] and not info["serving"]
        assert info["not_serving"] == tier["not_serving"]
        assert t.default_nprobe() == t.calibration["nprobe"]  # the INT8 path's own calibration
        truth, _ = FlatIndex(base[:3000], "l2").search(queries, 10)
        assert recall_at_k(t.search(queries, 10)[0], truth, 10) >= 0.9


def test_codes_published_without_their_calibration_do_not_serve(tmp_path, tiered, queries, caplog):
    """A scan-codes run killed after publishing new codes, before committing their calibration: the manifest
    still holds the old codes' curve, which says nothing about the new ones. The open says so in the log, and
    calibrating the codes on disk (no re-encoding) makes them serve."""
    import os
    import subprocess
    import sys
    path = shutil.copytree(tiered, tmp_path / "k")
    code = f"from index.tierbuild import scan_codes_index; scan_codes_index({str(path)!r}, {CODE_BYTES * 2})"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "VDB_CRASH_AT": "scan-codes-published:1"},
                          capture_output=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with caplog.at_level("WARNING", logger="index.diskserve"):
        with SpannIndex.open(path, memory_budget_mb=64) as idx:
            on_disk = idx.files.scan_codes_summary()
            assert on_disk["code_bytes"] == CODE_BYTES * 2  # the new codes are on disk
            assert idx.tier is None and "--calibrate-only" in idx.scan_tier_info()["not_serving"]
            assert (idx.search(queries[:3], 10)[0] >= 0).all()
    assert any("the scan tier does not serve" in r.getMessage() for r in caplog.records)
    done = scan_codes_index(path, -1, calibrate_only=True)  # the codes stay: only their calibration is new
    assert done["reaches_target"] and done["calibrated_only"] and done["code_bytes"] == CODE_BYTES * 2
    with SpannIndex.open(path, memory_budget_mb=64) as idx:
        assert idx.files.scan_codes_summary()["content_crc"] == on_disk["content_crc"]
        assert idx.tier is not None and idx.tier.codes.code_bytes == CODE_BYTES * 2


@pytest.mark.parametrize("point", [pytest.param("scan-codes-written:1", marks=pytest.mark.slow),
                                   "scan-codes-before-publish:1"])
def test_a_writer_killed_while_replacing_the_scan_codes_leaves_the_old_file(tmp_path, tiered, queries, point):
    import os
    import subprocess
    import sys
    path = shutil.copytree(tiered, tmp_path / "k")
    before = (path / "scan.pq").read_bytes()
    code = f"from index.tierbuild import scan_codes_index; scan_codes_index({str(path)!r}, {CODE_BYTES * 2})"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "VDB_CRASH_AT": point},
                          capture_output=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (path / "scan.pq").read_bytes() == before  # the old file, whole: the new one was never renamed in
    assert list(path.glob(".scan.pq.tmp-*"))           # what the dead writer left
    with SpannIndex.open(path, memory_budget_mb=64) as idx:
        assert idx.tier.codes.code_bytes == CODE_BYTES and idx.verify()[0] == []
        assert (idx.search(queries[:3], 10)[0] >= 0).all()
    scan_codes_index(path, CODE_BYTES * 2)  # the next writer publishes and sweeps the dead one's file
    assert not list(path.glob(".scan.pq.tmp-*"))
    with SpannIndex.open(path, memory_budget_mb=64) as idx:
        assert idx.tier.codes.code_bytes == CODE_BYTES * 2


def test_vdbctl_check_reports_damaged_scan_codes(tmp_path, tiered):
    from click.testing import CliRunner
    from vdb.cli import cli
    path = shutil.copytree(tiered, tmp_path / "c")
    clean = CliRunner().invoke(cli, ["check", str(path)])
    assert clean.exit_code == 0, clean.output
    f = ScanCodeFile(path / "scan.pq")
    offset = f.codes.ctypes.data - f.buffer.ctypes.data + 5
    f.close()
    with open(path / "scan.pq", "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff\x00\xff")
    damaged = CliRunner().invoke(cli, ["check", str(path)])
    assert damaged.exit_code == 1 and "scan.pq" in damaged.output


def test_a_mutable_index_served_through_the_tier_finds_what_it_inserts_meanwhile(tmp_path, tiered, queries):
    """Freshness is judged against the directory at each query: a posting that grows after the tier opened is
    read from disk, so rows inserted in the same process are found."""
    path = shutil.copytree(tiered, tmp_path / "live")
    idx = MutableSpannIndex.open_writable(path)
    try:
        idx.use_disk(64)
        assert idx.tier is not None and idx.tier.stale_postings() == 0
        near = queries[:10] + np.float32(0.01)
        rows = idx.add_rows(near, np.arange(5 * 10**6, 5 * 10**6 + 10))
        idx.insert(rows)
        assert idx.tier.stale_postings() > 0
        found, _ = idx.search_rows(queries[:10], 10, _params(8))
        assert np.array_equal(found[:, 0], rows)
    finally:
        idx.close()


def test_info_says_whether_the_scan_tier_exists_and_serves(built_l2, tiered):
    with SpannIndex.open(built_l2, memory_budget_mb=64) as idx:
        assert idx.info()["scan_tier"] == {"present": False, "serving": False, "locked": False,
                                           "stale_postings": None}
    on_disk = ScanCodeFile(tiered / "scan.pq")
    expect = {"postings": on_disk.n_postings, "entries": on_disk.n_entries, "code_bytes": CODE_BYTES,
              "bytes": on_disk.nbytes}
    on_disk.close()
    with SpannIndex.open(tiered, memory_budget_mb=64) as idx:
        got = idx.info()["scan_tier"]
        assert idx.tier is not None and got["present"] and got["serving"] and got["stale_postings"] == 0
        assert {k: got[k] for k in expect} == expect and got["locked"] == idx.tier.locked
        assert idx.info()["disk_bytes"]["scan.pq"] == expect["bytes"]
    for opened, why in ((dict(), "no memory budget"), (dict(memory_budget_mb=64, scan_tier=False), "disabled"),
                        (dict(memory_budget_mb=0.01), "does not fit")):
        with SpannIndex.open(tiered, **opened) as idx:
            got = idx.info()["scan_tier"]
            assert idx.tier is None and got["present"] and not got["serving"] and got["stale_postings"] is None
            assert {k: got[k] for k in expect} == expect and why in got["not_serving"]


def test_the_scan_tier_stats_count_changed_postings_but_not_retired_ones(tmp_path, tiered):
    """Regression: a retired posting (split or merged away: count and CRC zeroed) counted as stale, although no
    query probes it, so the count overstated what falls back to the posting file."""
    from dataclasses import replace
    from storage.posting_format import FLAG_RETIRED
    path = shutil.copytree(tiered, tmp_path / "stale")
    idx = MutableSpannIndex.open_writable(path)
    try:
        idx.use_disk(64)
        assert idx.scan_tier_info()["stale_postings"] == 0
        d = idx.files.postings.dir
        crc, count, largest = d.crc.copy(), d.count.copy(), int(np.argmax(d.count))
        idx.params = replace(idx.params, split_limit=8, merge_limit=1)  # the largest posting is over it now
        idx.split(largest)
        d = idx.files.postings.dir
        assert d.flags[largest] & FLAG_RETIRED
        n = len(crc)
        changed = np.concatenate([(d.crc[:n] != crc) | (d.count[:n] != count), np.ones(len(d) - n, bool)])
        changed &= (d.flags & FLAG_RETIRED) == 0  # the two halves, and the neighbours the split moved rows into
        assert changed.sum() >= 2 and idx.scan_tier_info()["stale_postings"] == idx.tier.stale_postings() == \
            int(changed.sum())
    finally:
        idx.close()


def test_a_damaged_scan_code_header_is_reported_by_info_not_raised(tmp_path, tiered):
    path = shutil.copytree(tiered, tmp_path / "d")
    with open(path / "scan.pq", "r+b") as fh:
        fh.seek(4096 + 3)
        fh.write(b"\xff")
    with SpannIndex.open(path) as idx:  # the mmap path serves without the tier; info must still answer
        got = idx.info()["scan_tier"]
    assert got["present"] and not got["serving"] and "scan.pq" in got["damaged"]


def test_encoding_refuses_a_meaningless_code_size_before_locking_the_directory(tiered):
    from index.errors import InvalidParameterError
    with SpannIndex.open(tiered):  # a reader holds the lock: the size is checked first, so no LockedError
        for bad in (0, -2, 257, 2.5, True):
            with pytest.raises(InvalidParameterError, match=r"-1 \(automatic\) or in \[1, 256\]"):
                scan_codes_index(tiered, bad)


def test_scan_codes_refuse_an_index_without_heads(tmp_path):
    """Review: an index with no heads yet got a 0-posting tier trained on zeros, which stats then said did not fit
    the budget; it is refused, and the file is not written."""
    from index.errors import InvalidParameterError
    from index.mutable import MutableSpannIndex
    idx = MutableSpannIndex.create(tmp_path / "empty", 8, BuildParams())
    idx.close()
    with pytest.raises(InvalidParameterError, match="no heads"):
        scan_codes_index(tmp_path / "empty", 4)
    assert not (tmp_path / "empty" / "scan.pq").exists()


def test_calibrating_only_refuses_what_it_would_silently_skip(tmp_path, tiered, base):
    """Found by review: --calibrate-only ignored --bytes, and on a build without a target recall it reported
    success having calibrated nothing."""
    from index import BuildParams, build_index
    from index.errors import InvalidParameterError
    path = shutil.copytree(tiered, tmp_path / "t")
    with pytest.raises(InvalidParameterError, match=f"the codes on disk have {CODE_BYTES} bytes, not 8"):
        scan_codes_index(path, 8, calibrate_only=True)
    assert scan_codes_index(path, CODE_BYTES, calibrate_only=True)["reaches_target"]
    build_index(base[:2000], tmp_path / "n", params=BuildParams(head_ratio=0.02, seed=1, scan_code_bytes=8,
                                                                target_recall=0))
    with pytest.raises(InvalidParameterError, match="no target recall"):
        scan_codes_index(tmp_path / "n", -1, calibrate_only=True)


@pytest.mark.parametrize("seed", range(4))
def test_the_tier_scan_keeps_the_best_estimate_of_each_live_allowed_row(seed):
    """The scan skips an entry that cannot enter the full heap before it reads the row's state (issue 12: the
    state reads and the heap's duplicate checks were most of the scan); its answer must stay the brute-force
    one: each counted row once, at its smallest estimate, deleted rows, stale replicas and disallowed rows out."""
    from index.kernels.tier import tier_scan
    rng = np.random.default_rng(seed)
    n_rows, n_entries, n_sub = 300, 2000, 4
    rows = rng.integers(0, n_rows, n_entries).astype(np.int64)          # replicas: a row in several postings
    state = rng.integers(0, 3, n_rows).astype(np.uint8)
    versions = np.where(rng.random(n_entries) < 0.8, state[rows], (state[rows] + 1) % 3).astype(np.uint8)
    codes = rng.integers(0, 256, (n_entries, n_sub)).astype(np.uint8)
    terms = rng.random(n_entries).astype(np.float32)
    lut = rng.standard_normal((n_sub, 256)).astype(np.float32)
    start = np.arange(0, n_entries, 100, dtype=np.int64)
    count = np.full(len(start), 100, np.int64)
    pids = rng.permutation(len(start))[:12].astype(np.int64)
    qb = rng.standard_normal(len(pids)).astype(np.float32)
    allow = (rng.random(n_rows) < 0.7).astype(np.uint8) if seed % 2 else np.zeros(0, np.uint8)
    cap = 25
    hd, hi = np.empty(cap, np.float32), np.empty(cap, np.int64)
    n, scanned = tier_scan(pids, start, count, rows, versions, terms, codes, lut, qb, np.float32(2.0), state,
                           allow, True, hd, hi)
    best: dict[int, float] = {}
    for i, p in enumerate(pids):
        for e in range(start[p], start[p] + count[p]):
            r = int(rows[e])
            if versions[e] != state[r] or (len(allow) and not allow[r]):
                continue
            ip = np.float32(qb[i]) + np.float32(lut[np.arange(n_sub), codes[e]].sum(dtype=np.float32))
            d = np.float32(2.0) + terms[e] - np.float32(2.0) * ip
            best[r] = min(best.get(r, np.inf), float(d))
    want = sorted(best.items(), key=lambda kv: kv[1])[:cap]
    got = sorted(zip(hi[:n].tolist(), hd[:n].tolist()), key=lambda kv: kv[1])
    assert scanned == 12 * 100
    assert [r for r, _ in got] == [r for r, _ in want]
    assert np.allclose([d for _, d in got], [d for _, d in want], rtol=1e-5, atol=1e-5)
