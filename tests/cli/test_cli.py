"""vdbctl: every input format, the JSON outputs, and one-line errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from vdb.cli import cli


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def _write(path, x):
    """Write float32 vectors x in the format named by the file suffix."""
    ext = path.suffix
    n, d = x.shape
    if ext == ".npy":
        np.save(path, x)
    elif ext in (".fvecs", ".bvecs"):
        dtype = np.float32 if ext == ".fvecs" else np.uint8
        rows = [np.int32(d).tobytes() + row.astype(dtype).tobytes() for row in x]
        path.write_bytes(b"".join(rows))
    elif ext in (".fbin", ".u8bin", ".i8bin"):
        dtype = {".fbin": np.float32, ".u8bin": np.uint8, ".i8bin": np.int8}[ext]
        path.write_bytes(np.array([n, d], np.uint32).tobytes() + x.astype(dtype).tobytes())
    elif ext == ".hdf5":
        import h5py
        with h5py.File(path, "w") as f:
            f["train"] = x
            f["test"] = x[:5]
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((400, 8)) * 20 + 60).clip(0, 120).astype(np.float32)
    return tmp_path_factory.mktemp("cli"), x


@pytest.mark.parametrize("ext", [".npy", ".fvecs", ".bvecs", ".fbin", ".u8bin", ".i8bin", ".hdf5"])
def test_build_reads_every_format_and_prints_a_json_summary(data, ext):
    tmp, x = data
    src = _write(tmp / f"base{ext}", x)
    code, out = _run("build", src, "--out", tmp / f"idx{ext}", "-q", "--head-ratio", "0.05")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["n_vectors"] == 400 and summary["dim"] == 8 and summary["vectors_without_posting"] == 0


def test_search_writes_ids_and_distances_and_prints_latency(data):
    tmp, x = data
    _write(tmp / "b.npy", x)
    np.save(tmp / "q.npy", x[:7])
    assert _run("build", tmp / "b.npy", "--out", tmp / "s", "-q")[0] == 0
    code, out = _run("search", tmp / "s", "--queries", tmp / "q.npy", "--top-k", 3, "--out", tmp / "res",
                     "--latency")
    assert code == 0, out
    report = json.loads(out)
    assert report["queries"] == 7 and report["mean_latency_ms"] > 0
    ids, dist = np.load(tmp / "res.ids.npy"), np.load(tmp / "res.dist.npy")
    assert ids.shape == (7, 3) and ids.dtype == np.int64 and dist.dtype == np.float32
    assert (ids[:, 0] == np.arange(7)).all()  # each query is a base vector: it finds itself first
    # the same search served from disk within a memory budget reads the device and finds the same nearest
    code, out = _run("search", tmp / "s", "--queries", tmp / "q.npy", "--top-k", 3, "--out", tmp / "disk",
                     "--memory-budget-mb", 32)
    assert code == 0, out
    reads = json.loads(out)["device_reads"]
    assert reads["postings"]["reads"] > 0 and reads["rows"]["reads"] > 0
    assert (np.load(tmp / "disk.ids.npy")[:, 0] == np.arange(7)).all()


def test_info_prints_counts_sizes_and_parameters(data):
    tmp, x = data
    _write(tmp / "i.npy", x)
    _run("build", tmp / "i.npy", "--out", tmp / "info-idx", "-q", "--set", "max_replicas=4")
    code, out = _run("info", tmp / "info-idx")
    info = json.loads(out)
    assert code == 0 and info["vectors"] == 400 and info["build_params"]["max_replicas"] == 4
    assert info["resident_bytes"]["total"] > 0 and info["disk_bytes"]["postings.dat"] > 0


def test_build_with_custom_ids(data):
    tmp, x = data
    _write(tmp / "c.npy", x)
    np.save(tmp / "ids.npy", np.arange(400, dtype=np.int64) + 10_000)
    np.save(tmp / "q1.npy", x[:1])
    _run("build", tmp / "c.npy", "--out", tmp / "cidx", "-q", "--ids", tmp / "ids.npy")
    _run("search", tmp / "cidx", "--queries", tmp / "q1.npy", "--top-k", 1, "--out", tmp / "cres")
    assert np.load(tmp / "cres.ids.npy")[0, 0] == 10_000


def _bad(tmp, x):
    nan = x.copy()
    nan[3, 2] = np.nan
    np.save(tmp / "nan.npy", nan)
    np.save(tmp / "q_wrong_dim.npy", np.zeros((2, 5), np.float32))
    (tmp / "empty.fvecs").write_bytes(b"")
    (tmp / "junk.txt").write_text("hello")
    np.save(tmp / "ids_short.npy", np.arange(3))
    np.save(tmp / "one_d.npy", np.zeros(8, np.float32))


@pytest.mark.parametrize("args, message", [
    (["build", "{t}/missing.npy", "--out", "{t}/o1"], "no such file"),
    (["build", "{t}/junk.txt", "--out", "{t}/o2"], "unknown file type"),
    (["build", "{t}/empty.fvecs", "--out", "{t}/o3"], "empty"),
    (["build", "{t}/nan.npy", "--out", "{t}/o4"], "NaN"),
    (["build", "{t}/one_d.npy", "--out", "{t}/o5"], "2-D"),
    (["build", "{t}/b.npy", "--out", "{t}/o6", "--ids", "{t}/ids_short.npy"], "one per vector"),
    (["build", "{t}/b.npy", "--out", "{t}/o7", "--set", "head_ratio=7"], "head_ratio"),
    (["build", "{t}/b.npy", "--out", "{t}/o8", "--set", "nonsense=1"], "unknown build parameter"),
    (["search", "{t}/s", "--queries", "{t}/q_wrong_dim.npy"], "dimension 5"),
    (["search", "{t}/s", "--queries", "{t}/q.npy", "--top-k", "0"], "k must be"),
    (["search", "{t}/s", "--queries", "{t}/q.npy", "--memory-budget-mb", "-1"], "memory_budget_mb must be"),
    (["search", "{t}/nowhere", "--queries", "{t}/q.npy"], "no such index directory"),
    (["info", "{t}"], "no metadata store"),
    (["scan-codes", "{t}/s", "--bytes", "0"], "scan code bytes must be -1 (automatic) or in [1, 256], got 0"),
    (["scan-codes", "{t}/s", "--bytes", "257"], "got 257"),
    (["scan-codes", "{t}/s", "--bytes", "-2"], "got -2"),
    (["scan-codes", "{t}"], "no metadata store"),
    (["scan-codes", "{t}/nowhere"], "no such index directory"),
    (["scan-codes", "{t}/s", "--calibrate-only"], "no scan codes to calibrate"),
])
def test_bad_input_is_one_line_error_and_nonzero_exit(data, args, message):
    tmp, x = data
    _bad(tmp, x)
    if not (tmp / "s").exists():
        _write(tmp / "b.npy", x)
        np.save(tmp / "q.npy", x[:7])
        _run("build", tmp / "b.npy", "--out", tmp / "s", "-q")
    result = CliRunner().invoke(cli, [a.format(t=tmp) for a in args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 or result.output.startswith("Usage"), result.output


@pytest.mark.parametrize("command, message", [
    (["info"], "no metadata store"), (["scan-codes"], "no metadata store"), (["check"], "no metadata store"),
    (["search", "--queries", "{t}/q.npy"], "no metadata store"), (["repair"], "not a vdb data directory")])
def test_a_command_pointed_at_a_directory_that_is_no_index_writes_nothing_there(tmp_path, command, message):
    # a mistyped path once got a LOCK file from every command that opened it as an index, and `vdbctl repair`
    # made it a new data directory (LOCK, collections/) and exited 0
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "holiday.jpg").write_bytes(b"\xff\xd8")
    np.save(tmp_path / "q.npy", np.zeros((1, 4), np.float32))
    args = [command[0], str(stranger), *[a.format(t=tmp_path) for a in command[1:]]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert sorted(p.name for p in stranger.iterdir()) == ["holiday.jpg"]


def _scan_tier_of(path) -> dict:
    code, out = _run("info", path)
    assert code == 0, out
    return json.loads(out)["scan_tier"]


def test_scan_codes_adds_a_tier_that_serves_with_the_answers_of_the_int8_path(data):
    from index import FlatIndex, SpannIndex, recall_at_k
    tmp, x = data
    _write(tmp / "sc.npy", x)
    assert _run("build", tmp / "sc.npy", "--out", tmp / "sc", "-q")[0] == 0  # calibrated: so is the tier
    assert _scan_tier_of(tmp / "sc")["present"] is False and not (tmp / "sc" / "scan.pq").exists()
    queries = x[:50] + np.float32(0.5)
    truth, _ = FlatIndex(x, "l2").search(queries, 10)
    with SpannIndex.open(tmp / "sc", memory_budget_mb=32) as idx:
        assert idx.tier is None
        before = {eps: idx.search(queries, 10, nprobe=8, rerank_eps=eps)[0] for eps in (0.0, 0.2)}
    result = CliRunner().invoke(cli, ["scan-codes", str(tmp / "sc"), "--bytes", "4"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["code_bytes"] == 4 and summary["entries"] > 0 and summary["calibration"]["curve"]
    assert (tmp / "sc" / "scan.pq").stat().st_size == summary["bytes"]
    with SpannIndex.open(tmp / "sc", memory_budget_mb=32) as idx:
        assert idx.tier is not None and idx.info()["scan_tier"]["serving"] is True
        for eps, ids in before.items():  # what the tier promises (tests/index/test_scan_tier.py): the recall of
            got, dist = idx.search(queries, 10, nprobe=8, rerank_eps=eps)  # the INT8 path, exact distances
            assert recall_at_k(got, truth, 10) >= recall_at_k(ids, truth, 10) - 0.03
            assert np.allclose(dist, ((x[got] - queries[:, None, :]) ** 2).sum(-1), rtol=1e-4)
        assert idx.disk.io_stats()["postings"]["reads"] == 0  # every posting was scanned from the codes
    tier = _scan_tier_of(tmp / "sc")  # info opens without a budget: the codes exist, nothing serves them
    assert tier["present"] and not tier["serving"] and tier["code_bytes"] == 4 and tier["entries"] == summary["entries"]


def test_scan_codes_is_refused_while_the_index_is_open_and_sizes_itself_by_default(data):
    import vdb
    from index import SpannIndex
    from index.types import scan_code_bytes
    tmp, x = data
    _write(tmp / "busy.npy", x)
    assert _run("build", tmp / "busy.npy", "--out", tmp / "busy", "-q", "--set", "target_recall=0")[0] == 0
    path = tmp / "busy"

    def refused():
        result = CliRunner().invoke(cli, ["scan-codes", str(path)])
        assert result.exit_code == 1 and "cannot lock" in result.output and "in use" in result.output
        assert "Traceback" not in result.output and result.output.strip().count("\n") == 0, result.output
        assert not (path / "scan.pq").exists()

    with vdb.connect(tmp / "db") as db:
        db.attach_collection("c", path)  # a collection writes its directory: it holds the lock
        refused()
        assert db.stats("c")["scan_tier"]["present"] is False
    with SpannIndex.open(path):  # a reader holds it shared
        refused()
    result = CliRunner().invoke(cli, ["scan-codes", str(path)])  # closed: it is the operator's again
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["code_bytes"] == scan_code_bytes(x.shape[1])
    with SpannIndex.open(path, memory_budget_mb=32) as idx:
        assert idx.tier is not None and idx.tier.codes.code_bytes == scan_code_bytes(x.shape[1])


def test_the_installed_entry_point_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vdb.cli", "build", str(tmp_path / "nope.npy"), "--out",
                           str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "no such file" in proc.stderr


def test_every_command_documents_itself_with_an_example():
    for name, command in cli.commands.items():
        code, out = _run(name, "--help")
        assert code == 0 and "Example" in out, f"vdbctl {name} --help lacks an example"


def test_build_on_ray_gives_the_same_index_format(data):
    pytest.importorskip("ray")
    tmp, x = data
    _write(tmp / "ray.npy", x)
    code, out = _run("build", tmp / "ray.npy", "--out", tmp / "ray-idx", "-q", "--engine", "ray", "--workers", 1)
    assert code == 0, out
    summary = json.loads(out[out.index("{"):])
    assert summary["n_vectors"] == 400 and summary["ray"]["partitions_run"] >= 1
    code, out = _run("info", tmp / "ray-idx")
    assert code == 0 and json.loads(out)["vectors"] == 400
