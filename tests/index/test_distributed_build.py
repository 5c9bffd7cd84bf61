"""The distributed bulk build on Ray against the local build (the oracle), its resume, and its errors.

One local Ray (num_cpus=2) is shared by the module; the crashed driver runs in a subprocess connected to it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (optional extra: pip install 'vdb[ray]')")

from index import BuildParams, FlatIndex, InvalidParameterError, InvalidVectorsError, SpannIndex  # noqa: E402
from index import build_index, recall_at_k  # noqa: E402
from index.build import quantizer_sample_rows  # noqa: E402
from index.distributed import build_index_ray  # noqa: E402
from index.distributed.staging import Progress, Staging  # noqa: E402
from storage import IndexDir  # noqa: E402
from storage.fileheader import HEADER_SIZE  # noqa: E402
from vdb.inputs.readers import DatasetError, open_vectors  # noqa: E402
from vdb.inputs.synthetic import clustered, clustered_queries  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
N, DIM, NPROBE = 100_000, 32, 8
PART_ROWS = 32768  # 4 partitions, cut where the local build cuts its assignment batches
CRASHED_DRIVER = """
import sys
from index.distributed import build_index_ray
from vdb.inputs.readers import open_vectors
build_index_ray(sys.argv[1], sys.argv[2], reader=open_vectors, address=sys.argv[3], workers=2,
                partition_rows=int(sys.argv[4]))
"""


@pytest.fixture(scope="module")
def cluster():
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                   configure_logging=False, object_store_memory=128 << 20)  # private, even beside another Ray
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-data")
    base, queries = clustered(N, DIM), clustered_queries(200, N, DIM)
    np.save(root / "base.npy", base)
    truth, _ = FlatIndex(base, "l2").search(queries, 10)
    return root / "base.npy", queries, truth


@pytest.fixture(scope="module")
def local_index(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("ray-local") / "idx"
    # the Ray build assigns every row by a head search (its partitions do not know the rows' leaf heads): the
    # local build that does the same is its reference
    build_index(np.load(data[0], mmap_mode="r"), path, params=BuildParams(leaf_assign=False))
    return path


def _recall(path, queries, truth) -> float:
    with SpannIndex.open(path) as idx:
        return recall_at_k(idx.search(queries, 10, nprobe=NPROBE)[0], truth, 10)


def _posting_ids(path) -> np.ndarray:
    d = IndexDir.open(path)
    try:
        return np.concatenate([d.postings.records(p)["id"] for p in range(d.postings.n_postings)])
    finally:
        d.close()


def _same_file(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def test_ray_build_matches_the_local_build(cluster, data, local_index, tmp_path):
    path, queries, truth = data
    out = tmp_path / "idx"
    summary = build_index_ray(path, out, reader=open_vectors, workers=2, partition_rows=PART_ROWS)
    assert summary["ray"]["workers"] == 2 and summary["ray"]["partitions_run"] == 4
    with SpannIndex.open(local_index) as idx:
        local_stats = idx.files.manifest["build_stats"]
    assert {k: summary[k] for k in local_stats} == local_stats
    assert abs(_recall(out, queries, truth) - _recall(local_index, queries, truth)) <= 0.005
    assert np.bincount(_posting_ids(out), minlength=N).min() >= 1  # every vector is in a posting
    # Same heads (same sample, params and seed), same batches through an exact head index: the same index.
    for name in ("heads.f32", "postings.dat", "vectors.f32"):
        assert _same_file(out / name, local_index / name), name
    assert not Staging.for_output(out).root.exists()
    # calibrated as the local build is (the Ray build once left the default nprobe uncalibrated)
    with SpannIndex.open(local_index) as a, SpannIndex.open(out) as b:
        ray_cal, local_cal = b.files.manifest.get("calibration") or {}, a.files.manifest["calibration"]
        assert {k: v for k, v in ray_cal.items() if k != "seconds"} == \
            {k: v for k, v in local_cal.items() if k != "seconds"}
        assert b.default_nprobe() == a.default_nprobe()
        assert b.files.manifest["build_params"]["leaf_assign"] is False  # what it did, whatever the default


def test_a_ray_build_with_scan_codes_writes_the_scan_tier(cluster, tmp_path):
    small = tmp_path / "small.npy"
    np.save(small, clustered(6000, DIM))
    params = BuildParams(scan_code_bytes=8, target_recall=0)
    summary = build_index_ray(small, tmp_path / "idx", reader=open_vectors, workers=2, partition_rows=2000,
                              params=params)
    with SpannIndex.open(tmp_path / "idx", memory_budget_mb=64) as idx:
        assert idx.tier is not None and idx.tier.stale_postings() == 0
        valid = sum(int((idx.files.postings.records(p)["version"] == idx.state[idx.files.postings.records(p)["id"]])
                        .sum()) for p in range(idx.files.postings.n_postings))
    assert summary["scan_codes"]["entries"] == valid > 0  # every valid posting record has its code


def test_killed_build_resumes_reusing_completed_partitions(cluster, data, local_index, tmp_path):
    path, queries, truth = data
    out = tmp_path / "idx"
    env = {**os.environ, "VDB_CRASH_AT": "ray-build-partition-recorded:2"}
    run = subprocess.run([sys.executable, "-c", CRASHED_DRIVER, str(path), str(out), cluster, str(PART_ROWS)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr[-2000:]
    staging = Staging.for_output(out)
    record = Progress.from_file(staging.progress_path)
    assert len(record.done) == 2 and not out.exists()  # which two depends on the actors' timing
    # A half-written partition: a torn part file and garbage rows where its vectors go. Both must be redone.
    victim, finished = max(set(range(4)) - record.done), min(record.done)
    staging.part_path(victim).write_bytes(staging.part_path(finished).read_bytes()[:1000])
    row_bytes = 4 * DIM + 4
    with open(staging.index_dir / "vectors.f32", "r+b") as f:
        f.seek(HEADER_SIZE + victim * PART_ROWS * row_bytes)
        f.write(b"\xff" * 50 * row_bytes)

    summary = build_index_ray(path, out, reader=open_vectors, workers=2, partition_rows=PART_ROWS)
    assert summary["ray"]["partitions_reused"] == 2 and summary["ray"]["partitions_run"] == 2
    assert "cluster" not in summary["timings_s"]  # the staged plan was reused, not retrained
    assert abs(_recall(out, queries, truth) - _recall(local_index, queries, truth)) <= 0.005
    for name in ("postings.dat", "vectors.f32"):
        assert _same_file(out / name, local_index / name), name
    assert not staging.root.exists()


def test_a_staged_build_of_something_else_is_discarded(tmp_path):
    staging = Staging(tmp_path / "s")
    (staging.index_dir).mkdir(parents=True)
    staging.save_progress(Progress({"params": {"seed": 0}}, 4, set()))
    assert staging.resume({"params": {"seed": 0}}, 4) is not None
    assert staging.resume({"params": {"seed": 1}}, 4) is None
    assert staging.resume({"params": {"seed": 0}}, 5) is None
    staging.save_progress(Progress({"params": {"seed": 0}}, 4, {0, 1}))
    assert staging.resume({"params": {"seed": 0}}, 4) is None  # done partitions but no plan


def test_bad_input_raises_the_local_builds_errors(data, tmp_path):
    path, _, _ = data
    missing = tmp_path / "missing.npy"
    with pytest.raises(DatasetError) as local:
        build_index(open_vectors(missing), tmp_path / "a")  # what `vdbctl build` does
    with pytest.raises(DatasetError) as dist:
        build_index_ray(missing, tmp_path / "a", reader=open_vectors)
    assert str(dist.value) == str(local.value)

    base = open_vectors(path)
    for bad_ids in (np.arange(N - 1), np.zeros(N, np.int64)):  # wrong length, duplicates
        with pytest.raises(InvalidVectorsError) as local:
            build_index(base, tmp_path / "b", ids=bad_ids)
        with pytest.raises(InvalidVectorsError) as dist:
            build_index_ray(path, tmp_path / "b", ids=bad_ids, reader=open_vectors)
        assert str(dist.value) == str(local.value)
    (tmp_path / "c").mkdir()
    with pytest.raises(InvalidParameterError):
        build_index_ray(path, tmp_path / "c", reader=open_vectors)
    with pytest.raises(InvalidParameterError):
        build_index_ray(path, tmp_path / "d", params=BuildParams(head_ratio=0), reader=open_vectors)
    assert not any(p.name.endswith(".ray-staging") for p in tmp_path.iterdir())  # failed before staging


def test_bad_rows_seen_only_by_an_actor_raise_the_typed_error(cluster, tmp_path):
    n, head_sample = 110_000, 2000
    x = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    seen_by_driver = set(quantizer_sample_rows(n, 0).tolist())
    seen_by_driver |= set(np.random.default_rng([0, 1]).choice(n, head_sample, replace=False).tolist())
    bad = min(set(range(n)) - seen_by_driver)
    x[bad, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(InvalidVectorsError, match="NaN") as local:
        build_index(x, tmp_path / "local")
    with pytest.raises(InvalidVectorsError, match="NaN") as dist:
        build_index_ray(tmp_path / "nan.npy", tmp_path / "idx", head_sample=head_sample, partition_rows=PART_ROWS,
                        reader=open_vectors)
    assert type(dist.value) is type(local.value) and str(dist.value).startswith("input rows ")
    assert not Staging.for_output(tmp_path / "idx").root.exists()
