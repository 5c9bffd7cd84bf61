"""A whole evaluation on a small labelled set generated here: outputs, funnel arithmetic, metric misuse."""
from __future__ import annotations

import json

import pytest

from vdb.eval.report import write_outputs
from vdb.eval.runner import EvalConfig, run_eval

FAST = dict(quick=True, progress=False, n_boot=200, latency_queries=20)


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory):
    from labelled import make_labelled
    out = tmp_path_factory.mktemp("cosine")
    result = run_eval(make_labelled(), out, EvalConfig(metric="cosine", **FAST))
    return result, out, write_outputs(result, out, command="test")


def _stages_sum(funnel) -> float:
    return 1.0 - sum(loss for _, loss in funnel.stages() if loss is not None)


def test_outputs_are_written_and_complete(cosine_run):
    result, out, paths = cosine_run
    for name in ("points.jsonl", "summary.json", "report.md", "qps_vs_recall.png", "task_vs_recall.png",
                 "funnel.png", "latency_cdf.png"):
        assert (out / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    assert len(rows) == len(result.points) and {r["kind"] for r in rows} == {"vdb", "faiss-flat", "faiss-ivf",
                                                                              "faiss-hnsw", "vdb-service"}
    need = {"label", "system", "build", "search", "recall", "label_vote_acc@10", "target_hit@10", "qps",
            "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "build_s", "ram_bytes", "disk_bytes",
            "machine", "git_revision", "seed", "ci"}
    assert all(need <= set(r) for r in rows)
    vdb = [r for r in rows if r["kind"] == "vdb"]
    assert all(r["bytes_read_per_query"] > 0 and r["disk_bytes"] > 0 for r in vdb)
    assert next(r for r in rows if r["kind"] == "faiss-flat")["recall"] == 1.0
    summary = json.loads((out / "summary.json").read_text())                   # strict JSON: no NaN
    assert {"funnel", "metafeatures", "recommendation", "check", "rankings", "exact"} <= set(summary)
    assert summary["rankings"]["points"]["kendall_tau"] is not None
    assert "## Information-loss funnel" in (out / "report.md").read_text()


def test_funnel_stages_add_up_to_the_served_value(cosine_run):
    f = cosine_run[0].funnel
    assert f.chosen_metric == "cosine" and f.best_metric == "cosine"
    assert dict(f.stages())["metric misuse"] == 0.0
    cache_loss = dict(f.stages())["cache loss"]  # exact repeats through the cache: certified, so no loss
    assert cache_loss is not None and cache_loss <= 0.01
    assert _stages_sum(f) == pytest.approx(f.final, abs=1e-12)
    served_row = next(p for p in cosine_run[0].points if p["label"] == f.served_point)
    assert served_row["label_vote_acc@10"] == pytest.approx(f.served, abs=1e-5)


def test_exact_search_ranks_the_metrics_as_the_data_was_built(cosine_run):
    exact = cosine_run[0].exact
    vote = {m: exact[m]["label_vote_acc@10"]["mean"] for m in exact}
    assert vote["cosine"] > 0.8 and vote["ip"] < vote["cosine"] - 0.2         # raw IP follows the noisy norms


def test_wrong_metric_shows_up_as_metric_misuse(tmp_path):
    from labelled import make_labelled
    result = run_eval(make_labelled(), tmp_path, EvalConfig(metric="ip", **FAST))
    f = result.funnel
    misuse = dict(f.stages())["metric misuse"]
    assert f.best_metric == "cosine" and f.chosen_metric == "ip"
    assert misuse > 0.2 and f.ci["metric misuse"][0] > 0.1                    # significant, not noise
    assert _stages_sum(f) == pytest.approx(f.final, abs=1e-12)
    # the most faithful raw-IP point has near-perfect recall, and the task value of exact raw IP: only the
    # task metric reveals the misuse. (At low nprobe vdb scores *better* than exact IP, because its IP heads
    # live on the unit sphere and a few probes reach only angular neighbourhoods: recall and task disagree.)
    top = max((p for p in result.points if p["kind"] == "vdb"), key=lambda p: p["recall"])
    assert top["recall"] > 0.95 and top["label_vote_acc@10"] < f.ceiling - 0.2
    assert result.check.best_metric == "cosine"


def test_seeded_runs_repeat_their_quality_numbers(tmp_path):
    from labelled import make_labelled
    ds = make_labelled(n=800, nq=60)
    a = run_eval(ds, tmp_path / "a", EvalConfig(metric="l2", **FAST))
    b = run_eval(ds, tmp_path / "b", EvalConfig(metric="l2", **FAST))
    key = ("label", "recall", "label_vote_acc@10", "ci")
    assert [{k: p[k] for k in key} for p in a.points] == [{k: p[k] for k in key} for p in b.points]
    assert a.metafeatures == b.metafeatures and a.funnel.stages() == b.funnel.stages()
