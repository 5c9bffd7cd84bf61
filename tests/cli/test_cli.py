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
