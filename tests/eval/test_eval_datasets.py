"""Loading datasets: npy folders, ann-benchmarks HDF5, Iceberg .bin, the synthetic built-in, and bad input."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from vdb.errors import InvalidArgumentError
from vdb.eval.datasets import EvalDataset, load_dataset, synthetic_dataset
from vdb.eval.errors import EvalDatasetError
from vdb.eval.formats import infer_record_dim
from vdb.eval.tasks import evaluate_tasks, primary_task, task_metric_names


def _write_npy_folder(path, ds: EvalDataset, *, normalized: bool = True):
    path.mkdir()
    np.save(path / "base.npy", ds.base.astype(np.float16))
    np.save(path / "query.npy", ds.queries.astype(np.float16))
    np.save(path / "base_labels.npy", ds.base_labels.astype(np.int16))
    np.save(path / "query_labels.npy", ds.query_labels.astype(np.int16))
    np.save(path / "base_sections.npy", (ds.base_labels // 2).astype(np.int16))
    np.save(path / "query_sections.npy", (ds.query_labels // 2).astype(np.int16))
    np.save(path / "base_norms.npy", ds.base_norms)
    np.save(path / "query_norms.npy", ds.query_norms)
    np.save(path / "query_target.npy", ds.query_target)
    (path / "qrels_chapter.json").write_text(json.dumps({"0": [1, 2], "3": [5]}))
    (path / "meta.json").write_text(json.dumps({"normalized": normalized}))
    (path / "README.md").write_text("# toy: a test folder\n\nbody\n")


def test_npy_folder_layout(tmp_path, toy):
    _write_npy_folder(tmp_path / "toy", toy)
    ds = load_dataset(str(tmp_path / "toy"))
    assert (ds.name, ds.n, ds.nq, ds.dim, ds.metric) == ("toy", toy.n, toy.nq, toy.dim, "cosine")
    assert ds.description == "toy: a test folder"
    assert set(ds.label_sets()) == {"label", "section"}                       # "sections" -> "section"
    assert ds.base.dtype == np.float32 and ds.base_norms is not None
    np.testing.assert_allclose(ds.raw_base(), toy.base.astype(np.float16).astype(np.float32) * toy.base_norms[:, None],
                               rtol=1e-6)
    assert list(ds.qrels[0]) == [1, 2] and list(ds.qrels[3]) == [5] and len(ds.qrels[1]) == 0
    names = task_metric_names(ds, 10)
    assert {"label_vote_acc@10", "section_vote_acc@10", "label_acc@1", "target_hit@10", "qrels_ndcg@10"} <= set(names)
    assert primary_task(ds, 10) == "label_vote_acc@10"
    values = evaluate_tasks(np.tile(np.arange(10), (ds.nq, 1)), ds, 10)
    assert set(values) == set(names) and all(len(v) == ds.nq for v in values.values())


def test_metric_detected_from_norms_without_meta(tmp_path):
    (tmp_path / "d").mkdir()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "d" / "base.npy", rng.standard_normal((50, 4)).astype(np.float32) * 3)
    np.save(tmp_path / "d" / "query.npy", rng.standard_normal((5, 4)).astype(np.float32))
    ds = load_dataset(str(tmp_path / "d"))
    assert ds.metric == "l2" and not ds.has_labels and primary_task(ds, 10) is None


def test_missing_and_bad_files_raise_one_line_typed_errors(tmp_path):
    with pytest.raises(EvalDatasetError, match="no such file or directory"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalDatasetError, match="no base.npy"):
        load_dataset(str(tmp_path / "empty"))
    d = tmp_path / "bad"
    d.mkdir()
    np.save(d / "base.npy", np.zeros((4, 3), np.float32))
    np.save(d / "query.npy", np.zeros((2, 5), np.float32))
    with pytest.raises(EvalDatasetError) as info:
        load_dataset(str(d))
    assert isinstance(info.value, InvalidArgumentError) and "\n" not in str(info.value)
    assert "dimension" in str(info.value)
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(EvalDatasetError, match="unknown dataset type"):
        load_dataset(str(tmp_path / "x.csv"))


def test_inconsistent_arrays_rejected(toy):
    with pytest.raises(EvalDatasetError, match="base labels"):
        EvalDataset("x", toy.base, toy.queries, base_labels=toy.base_labels[:-1], query_labels=toy.query_labels)
    with pytest.raises(EvalDatasetError, match="query_target"):
        EvalDataset("x", toy.base, toy.queries, query_target=np.full(toy.nq, toy.n))
    with pytest.raises(EvalDatasetError, match="float32"):
        EvalDataset("x", toy.base.astype(np.float64), toy.queries)


def test_ann_benchmarks_hdf5(tmp_path):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "toy-angular.hdf5", "w") as f:
        f.attrs["distance"] = "angular"
        f["train"] = rng.standard_normal((100, 8)).astype(np.float32)
        f["test"] = rng.standard_normal((7, 8)).astype(np.float32)
        f["neighbors"] = np.tile(np.arange(10, dtype=np.int32), (7, 1))
    ds = load_dataset(str(tmp_path / "toy-angular.hdf5"))
    assert (ds.n, ds.nq, ds.metric, ds.neighbors.shape) == (100, 7, "cosine", (7, 10))
    assert primary_task(ds, 10) is None                                       # no labels: recall only
    with h5py.File(tmp_path / "j.hdf5", "w") as f:
        f.attrs["distance"] = "jaccard"
        f["train"], f["test"] = np.zeros((3, 2), np.float32), np.zeros((1, 2), np.float32)
    with pytest.raises(EvalDatasetError, match="jaccard"):
        load_dataset(str(tmp_path / "j.hdf5"))


def _write_records(path, labels, vectors):
    rec = np.empty((len(labels), vectors.shape[1] + 1), np.uint32)
    rec[:, 0] = labels
    rec[:, 1:] = vectors.astype(np.float32).view(np.uint32)
    rec.tofile(path)


def test_iceberg_bin_records_with_inferred_dimension(tmp_path):
    rng = np.random.default_rng(0)
    xb, xq = rng.standard_normal((60, 6)).astype(np.float32), rng.standard_normal((9, 6)).astype(np.float32)
    _write_records(tmp_path / "emb-train.bin", np.zeros(60, np.uint32), xb)     # sorted files start with class 0
    _write_records(tmp_path / "emb-test.bin", np.arange(9) % 3, xq)
    _write_records(tmp_path / "emb-train-label.bin", np.zeros(60, np.uint32), np.zeros((60, 0)))  # ignored
    assert infer_record_dim(tmp_path / "emb-train.bin", tmp_path / "emb-test.bin") == 6
    for spec in (tmp_path / "emb-train.bin", tmp_path,
                 f"{tmp_path / 'emb-train.bin'},{tmp_path / 'emb-test.bin'}"):
        ds = load_dataset(str(spec))
        np.testing.assert_array_equal(ds.base, xb)
        np.testing.assert_array_equal(ds.query_labels, np.arange(9) % 3)
    with pytest.raises(EvalDatasetError, match="whole number"):
        load_dataset(str(tmp_path / "emb-train.bin"), dim=7)


def test_synthetic_builtin_is_deterministic_and_parsed():
    a = load_dataset("synthetic:n=500,nq=20,dim=8,clusters=5")
    b = synthetic_dataset(n=500, nq=20, dim=8, clusters=5)
    assert a.fingerprint == b.fingerprint and a.metric == "l2" and a.has_labels
    np.testing.assert_array_equal(a.base_labels, b.base_labels)
    assert len(np.unique(a.base_labels)) > 1
    with pytest.raises(EvalDatasetError, match="bad option"):
        load_dataset("synthetic:foo=1")
    with pytest.raises(EvalDatasetError, match="integer"):
        load_dataset("synthetic:n=1.5")


def test_with_queries_slices_every_query_array(toy):
    ds = EvalDataset("x", toy.base, toy.queries, toy.base_labels, toy.query_labels,
                     extra_labels={"s": (toy.base_labels, toy.query_labels)}, query_target=toy.query_target,
                     qrels=tuple(np.array([i]) for i in range(toy.nq)), base_norms=toy.base_norms,
                     query_norms=toy.query_norms)
    sub = ds.with_queries(5)
    assert sub.nq == 5 and len(sub.query_labels) == 5 and len(sub.qrels) == 5 and len(sub.query_norms) == 5
    assert len(sub.extra_labels["s"][1]) == 5 and len(sub.query_target) == 5 and sub.n == ds.n
