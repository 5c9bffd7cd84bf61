"""An index served from disk under a memory budget (index/diskread.py) answers as the mmap path does, reads what
it says it reads, keeps its cache in the budget and reports damaged bytes."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from index import FlatIndex, SearchStats, SpannIndex, build_index, recall_at_k
from index.types import BuildParams
from storage import CorruptionError
from storage.fileheader import HEADER_SIZE


@pytest.mark.parametrize("budget_mb", [0.0, 64.0])
def test_disk_path_answers_exactly_as_the_mmap_path(built_l2, queries, budget_mb):
    with SpannIndex.open(built_l2) as m, SpannIndex.open(built_l2, memory_budget_mb=budget_mb) as d:
        for nprobe, eps in ((2, 0.0), (8, 0.0), (8, 0.05)):  # the same re-rank cut on both paths
            a, da = m.search(queries, 10, nprobe=nprobe, rerank_eps=eps)
            b, db = d.search(queries, 10, nprobe=nprobe, rerank_eps=eps)
            assert np.array_equal(a, b) and np.allclose(da, db)
        again = d.search(queries, 10, nprobe=8, rerank_eps=0)  # now partly from the posting cache
        assert np.array_equal(again[0], m.search(queries, 10, nprobe=8, rerank_eps=0)[0])
        assert d.disk.cache.bytes <= d.disk.cache.budget
        if budget_mb == 0:
            assert d.disk.cache.bytes == 0 and len(d.disk.cache) == 0


def test_device_reads_are_counted_and_the_cache_saves_them(built_l2, queries):
    with SpannIndex.open(built_l2, memory_budget_mb=64) as d:
        st = SearchStats()
        d.search(queries[:50], 10, nprobe=4, stats=st)
        first = d.disk.io_stats()
        assert first["rows"]["pages"] > 0 and first["postings"]["pages"] > 0
        assert st.bytes_read == first["rows"]["bytes"] + first["postings"]["bytes"]
        d.search(queries[:50], 10, nprobe=4)
        second = d.disk.io_stats()
        assert second["postings"]["pages"] == first["postings"]["pages"]  # every posting came from the cache
        assert second["cache"]["hits"] > 0


def test_rerank_eps_reads_fewer_rows_and_keeps_at_least_k(built_l2, base, queries):
    truth, _ = FlatIndex(base, "l2").search(queries, 10)
    with SpannIndex.open(built_l2, memory_budget_mb=64) as d:
        full, _ = d.search(queries, 10, nprobe=8, rerank_eps=0)
        rows_full = d.disk.io_stats()["rows"]["reads"]
        cut, dist = d.search(queries, 10, nprobe=8, rerank_eps=0.05)
        rows_cut = d.disk.io_stats()["rows"]["reads"] - rows_full
    assert rows_cut < rows_full
    assert (cut >= 0).all() and np.isfinite(dist).all()
    assert recall_at_k(cut, truth, 10) >= recall_at_k(full, truth, 10) - 0.02


def test_a_damaged_posting_is_reported_by_the_disk_path(tmp_path, built_l2, queries):
    path = shutil.copytree(built_l2, tmp_path / "c")
    with SpannIndex.open(path) as idx:
        pid = int(idx.probe(queries[:1], _params())[0, 0])
        off = int(idx.files.postings.dir.offset[pid])
    with open(path / "postings.dat", "r+b") as fh:
        fh.seek(off + 12)
        fh.write(b"\xAA\xBB")
    with SpannIndex.open(path, memory_budget_mb=16) as idx, pytest.raises(CorruptionError) as e:
        idx.search(queries[0], 10)
    assert "postings.dat" in str(e.value) and f"posting {pid}" in str(e.value)


def test_a_damaged_row_is_reported_by_the_disk_path(tmp_path, built_l2, base, queries):
    path = shutil.copytree(built_l2, tmp_path / "v")
    nearest = int(FlatIndex(base, "l2").search(queries[0], 1)[0][0])
    with open(path / "vectors.f32", "r+b") as fh:
        fh.seek(HEADER_SIZE + nearest * (4 * 32 + 4) + 8)
        fh.write(b"\x01\x02\x03")
    with SpannIndex.open(path, memory_budget_mb=16) as idx, pytest.raises(CorruptionError) as e:
        idx.search(queries[0], 10, nprobe=64)
    assert "vectors.f32" in str(e.value) and f"row {nearest}" in str(e.value)


def test_the_plain_reader_path_answers_the_same(built_l2, queries):
    with SpannIndex.open(built_l2, memory_budget_mb=8, direct_io=False) as d, SpannIndex.open(built_l2) as m:
        assert not d.disk.post_reader.direct
        assert np.array_equal(d.search(queries, 10, nprobe=6, rerank_eps=0.05)[0],
                              m.search(queries, 10, nprobe=6, rerank_eps=0.05)[0])


def test_a_build_packs_postings_and_keeps_no_id_array_for_dense_ids(built_l2, tmp_path, base):
    with SpannIndex.open(built_l2) as idx:
        info = idx.info()
        records = info["build_stats"]["records"]
        assert info["disk_bytes"]["postings.dat"] == HEADER_SIZE + records * (8 + 32)  # 1.0x the records
        assert info["resident_bytes"]["id_map"] == 0
        assert idx.search(base[5], 1, nprobe=8)[0][0] == 5
    ids = np.arange(len(base)) * 3 + 7
    build_index(base, tmp_path / "ids", ids=ids, params=BuildParams(head_ratio=0.02, seed=1, target_recall=0))
    with SpannIndex.open(tmp_path / "ids") as idx:
        assert idx.resident_bytes()["id_map"] == 8 * len(base)
        assert idx.search(base[5], 1, nprobe=8)[0][0] == ids[5]


def _params():
    from index import SearchParams
    return SearchParams().resolved(10)


def test_vdbctl_check_passes_a_freshly_built_index_with_dense_ids(built_l2):
    from click.testing import CliRunner
    from vdb.cli import cli
    with SpannIndex.open(built_l2) as idx:
        assert idx.int2ext.nbytes == 0  # the build was given no ids: no id array in RAM
    result = CliRunner().invoke(cli, ["check", str(built_l2)])
    assert result.exit_code == 0, result.output


def test_the_disk_path_reads_a_posting_again_after_it_grew(tmp_path, built_l2, queries):
    """The posting cache is keyed by (posting, offset, count): an append keeps the offset and raises the count,
    so a cached copy from before it must not be served (it would be scanned as if it held the new records),
    and the reader re-checks the file's size before calling a read past its end."""
    from index.mutable import MutableSpannIndex
    path = shutil.copytree(built_l2, tmp_path / "g")
    idx = MutableSpannIndex.open_writable(path)
    try:
        idx.use_disk(64, scan_tier=False)
        first = idx.add_rows(queries[:10] + np.float32(0.02), np.arange(7 * 10**6, 7 * 10**6 + 10))
        idx.insert(first)   # a packed posting's first append moves it to a fresh extent with slack
        found, _ = idx.search_rows(queries[:10], 10, _params())  # caches those postings
        assert np.array_equal(found[:, 0], first)
        offsets = idx.files.postings.dir.offset.copy()
        rows = idx.add_rows(queries[:10] + np.float32(0.001), np.arange(8 * 10**6, 8 * 10**6 + 10))
        idx.insert(rows)    # appended into the slack: same offsets, higher counts
        moved = idx.files.postings.dir.offset[: len(offsets)] != offsets
        found, _ = idx.search_rows(queries[:10], 10, _params())
        assert not moved.all() and np.array_equal(found[:, 0], rows)
    finally:
        idx.close()
