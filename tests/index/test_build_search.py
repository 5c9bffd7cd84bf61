"""The SPANN index against the flat oracle, plus its failure modes."""
from __future__ import annotations

import numpy as np
import pytest

from index import BuildParams, FlatIndex, InvalidParameterError, InvalidVectorsError, SearchStats, SpannIndex
from index import build_index, recall_at_k
from index.assign import closure_assign
from index.centroids import HeadIndex
from storage import CorruptionError, TruncatedError
from storage.fileheader import HEADER_SIZE


def test_recall_floor_on_clustered_data(built_l2, base, queries):
    truth, _ = FlatIndex(base, "l2").search(queries, 10)
    with SpannIndex.open(built_l2) as idx:
        ids, _ = idx.search(queries, 10, nprobe=16)
        assert recall_at_k(ids, truth, 10) >= 0.95
        ids, _ = idx.search(queries, 10, nprobe=4)
        assert recall_at_k(ids, truth, 10) >= 0.6


def test_probing_every_posting_with_full_rerank_is_exact(built_l2, base, queries):
    truth, tdist = FlatIndex(base, "l2").search(queries, 10)
    with SpannIndex.open(built_l2) as idx:
        heads = idx.head_index.size
        ids, dist = idx.search(queries, 10, nprobe=heads, eps=1e9, rerank_k=len(base))
    assert np.array_equal(ids, truth)
    assert np.allclose(dist, tdist, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_each_metric_matches_the_oracle_on_tiny_data(tmp_path, metric):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, 16)).astype(np.float32) * rng.uniform(0.5, 2, (300, 1)).astype(np.float32)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    build_index(x, tmp_path / metric, params=BuildParams(metric=metric, head_ratio=0.05))
    truth, tdist = FlatIndex(x, metric).search(q, 5)
    with SpannIndex.open(tmp_path / metric) as idx:
        ids, dist = idx.search(q, 5, nprobe=idx.head_index.size, eps=1e9, rerank_k=300)
    assert np.array_equal(ids, truth)
    assert np.allclose(dist, tdist, rtol=1e-4, atol=1e-4)


def test_every_vector_lands_in_at_least_one_posting_even_with_a_tiny_cap(base):
    params = BuildParams(head_ratio=0.02, posting_cap=3).resolved(base.shape[1])
    from index.clustering import hierarchical_heads
    heads = hierarchical_heads(base, 120, params, spherical=False)
    a = closure_assign(base, len(base), heads, HeadIndex.build(heads, angular=False), params)
    assert np.bincount(a.vec, minlength=len(base)).min() >= 1
    assert a.over_cap > 0  # the cap gave way rather than drop a single-copy vector


def test_posting_lengths_are_balanced(built_l2):
    with SpannIndex.open(built_l2) as idx:
        lengths = idx.info()["posting_lengths"]
    assert lengths["min"] >= 1
    assert lengths["max"] <= 6 * lengths["mean"]


def test_custom_ids_come_back(tmp_path, base, queries):
    ids = (np.arange(len(base), dtype=np.int64) * 1000 + 17)[::-1].copy()
    build_index(base, tmp_path / "i", ids=ids, params=BuildParams(head_ratio=0.02))
    truth, _ = FlatIndex(base, "l2", ids=ids).search(queries[:20], 5)
    with SpannIndex.open(tmp_path / "i") as idx:
        got, _ = idx.search(queries[:20], 5, nprobe=64)
    assert recall_at_k(got, truth, 5) >= 0.95
    assert set(got.ravel()) <= set(ids.tolist())


def test_single_query_returns_flat_arrays_and_k_beyond_n_pads(tmp_path):
    x = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    build_index(x, tmp_path / "s", params=BuildParams(head_ratio=0.1))
    with SpannIndex.open(tmp_path / "s") as idx:
        ids, dist = idx.search(x[0], 50, nprobe=100, rerank_k=100)
    assert ids.shape == (50,) and ids[0] == 0 and (ids[30:] == -1).all() and np.isinf(dist[30:]).all()


def test_explain_stats_count_postings_and_bytes(built_l2, queries):
    st = SearchStats()
    with SpannIndex.open(built_l2) as idx:
        idx.search(queries[:10], 10, nprobe=8, stats=st)
    assert 0 < st.postings_probed <= 80 and st.records_scanned > 0 and st.bytes_read >= 4096 * st.postings_probed


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 31), np.float32), "dimension 31"),
    (np.full((1, 32), np.nan, np.float32), "NaN"),
    (np.zeros((0, 32), np.float32), "empty"),
    (np.zeros((2, 2, 32), np.float32), "2-D"),
    ([["a"] * 32], "numeric"),
])
def test_bad_queries_raise_typed_errors(built_l2, bad, match):
    with SpannIndex.open(built_l2) as idx, pytest.raises(InvalidVectorsError, match=match):
        idx.search(bad, 10)


@pytest.mark.parametrize("k", [0, -1, 10**9, 2.5, True])
def test_bad_k_is_rejected(built_l2, queries, k):
    with SpannIndex.open(built_l2) as idx, pytest.raises(InvalidParameterError):
        idx.search(queries[0], k)


def test_bad_search_knobs_are_rejected(built_l2, queries):
    with SpannIndex.open(built_l2) as idx:
        with pytest.raises(InvalidParameterError, match="nprobe"):
            idx.search(queries[0], 5, nprobe=-1)  # 0 means "the calibrated nprobe"
        with pytest.raises(InvalidParameterError, match="unknown search parameter"):
            idx.search(queries[0], 5, bogus=3)


def test_cosine_build_rejects_zero_vectors(tmp_path):
    x = np.ones((10, 4), np.float32)
    x[6] = 0
    with pytest.raises(InvalidVectorsError, match="row 6"):
        build_index(x, tmp_path / "z", params=BuildParams(metric="cosine"))
    assert not (tmp_path / "z").exists() and list(tmp_path.iterdir()) == []  # no half-built leftovers


def test_build_refuses_to_overwrite_without_the_flag(tmp_path, base):
    build_index(base[:200], tmp_path / "o", params=BuildParams(head_ratio=0.05))
    with pytest.raises(InvalidParameterError, match="already exists"):
        build_index(base[:200], tmp_path / "o")
    build_index(base[:300], tmp_path / "o", params=BuildParams(head_ratio=0.05), overwrite=True)
    with SpannIndex.open(tmp_path / "o") as idx:
        assert len(idx) == 300


def test_duplicate_ids_are_rejected(tmp_path, base):
    with pytest.raises(InvalidVectorsError, match="duplicate"):
        build_index(base[:10], tmp_path / "d", ids=np.zeros(10, np.int64))


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_corrupted_posting_is_reported_not_answered(tmp_path, built_l2, queries):
    path = _copy(built_l2, tmp_path / "c")
    with SpannIndex.open(path) as idx:
        pid = int(idx.probe(queries[:1], idx_params(idx))[0, 0])
        off = int(idx.files.postings.dir.offset[pid])
    with open(path / "postings.dat", "r+b") as fh:
        fh.seek(off + 12)
        fh.write(b"\xAA\xBB")
    with SpannIndex.open(path) as idx, pytest.raises(CorruptionError) as e:
        idx.search(queries[0], 10)
    assert "postings.dat" in str(e.value) and f"posting {pid}" in str(e.value)


def test_corrupted_vector_row_is_reported_at_rerank(tmp_path, built_l2, base, queries):
    path = _copy(built_l2, tmp_path / "v")
    nearest = int(FlatIndex(base, "l2").search(queries[0], 1)[0][0])
    with open(path / "vectors.f32", "r+b") as fh:
        fh.seek(HEADER_SIZE + nearest * (4 * 32 + 4) + 8)
        fh.write(b"\x01\x02\x03")
    with SpannIndex.open(path) as idx, pytest.raises(CorruptionError) as e:
        idx.search(queries[0], 10, nprobe=64)
    assert "vectors.f32" in str(e.value) and f"row {nearest}" in str(e.value)


def test_truncated_posting_file_fails_at_open(tmp_path, built_l2):
    path = _copy(built_l2, tmp_path / "t")
    with open(path / "postings.dat", "r+b") as fh:
        fh.truncate(HEADER_SIZE * 3)
    with pytest.raises(TruncatedError, match="postings.dat"):
        SpannIndex.open(path)


def test_info_reports_sizes_and_ram(built_l2):
    with SpannIndex.open(built_l2) as idx:
        info = idx.info()
    assert info["vectors"] == 6000 and info["dim"] == 32 and info["metric"] == "l2"
    assert set(info["disk_bytes"]) >= {"vectors.f32", "postings.dat", "meta", "total"}
    assert 0 < info["resident_bytes"]["total"] < info["disk_bytes"]["total"]


def test_two_readers_may_share_an_index(built_l2, queries):
    with SpannIndex.open(built_l2) as a, SpannIndex.open(built_l2) as b:
        assert np.array_equal(a.search(queries[:3], 5)[0], b.search(queries[:3], 5)[0])


def test_threaded_batch_equals_single_threaded(built_l2, queries):
    with SpannIndex.open(built_l2) as idx:
        one = idx.search(queries, 10, threads=1)
        two = idx.search(queries, 10, threads=2)
    assert np.array_equal(one[0], two[0])


def idx_params(idx):
    from index import SearchParams
    return SearchParams().resolved(10)


def test_a_failed_row_write_is_reported_before_a_bad_chunk_read_after_it(tmp_path, monkeypatch):
    # the build writes one chunk while it checks the next: when the write failed (a full disk) and the next
    # chunk is invalid too, the write's error is what the user must see first (it was lost)
    import index.build as build_module
    import storage.vectors as vectors_module
    from storage.errors import DiskFullError
    monkeypatch.setattr(build_module, "CHUNK", 1000)
    x = np.random.default_rng(0).normal(size=(3000, 8)).astype(np.float32)
    x[1500] = np.nan                                   # the second chunk fails its check

    def full(self, vectors):
        raise DiskFullError("no space left for the rows")
    monkeypatch.setattr(vectors_module.VectorFile, "append", full)
    with pytest.raises(DiskFullError):
        build_index(x, tmp_path / "i")
    assert not (tmp_path / "i").exists()              # nothing half-built is published
