"""Dense vs BM25 vs hybrid on a dataset with texts: the built-in synthetic-text set (mechanisms it is built
to show), the comparison and its funnel, the report and the search-mode recommendation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from vdb.eval.commands import eval_command
from vdb.eval.datasets import load_dataset
from vdb.eval.errors import EvalDatasetError
from vdb.eval.recommend import recommend_hybrid

SPEC = "synthetic-text:n=1200,nq=120,topics=8"


def test_the_text_set_is_deterministic_and_validated():
    a, b = load_dataset(SPEC), load_dataset(SPEC)
    assert a.has_texts and a.base_texts == b.base_texts and np.array_equal(a.base, b.base)
    assert len(a.base_texts) == a.n and len(a.query_texts) == a.nq and a.summary()["texts"]
    named = a.query_target >= 0
    ident = [a.base_texts[t].split() for t in a.query_target[named]]
    assert all(set(q.split()) & set(d) for q, d in zip(np.array(a.query_texts)[named], ident))
    assert a.with_queries(10).query_texts == a.query_texts[:10]
    with pytest.raises(EvalDatasetError):
        load_dataset("synthetic-text:bogus=1")


def test_eval_compares_the_modes_and_recommends_one(tmp_path):
    res = CliRunner().invoke(eval_command, [SPEC, "--quick", "--out", str(tmp_path), "-q", "--latency-queries", "20"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    modes = summary["modes"]
    rows = modes["modes"]
    assert set(rows) == {"dense", "bm25", "hybrid-rrf", "hybrid-weighted"} and modes["task"] == "label_vote_acc@10"
    # the mechanisms the set is built to show: the embedding knows topics, BM25 knows identifiers
    assert rows["dense"]["label_vote_acc@10"]["mean"] > rows["bm25"]["label_vote_acc@10"]["mean"] + 0.2
    assert rows["bm25"]["target_hit@10"]["mean"] > rows["dense"]["target_hit@10"]["mean"] + 0.5
    assert rows["hybrid-rrf"]["target_hit@10"]["mean"] > rows["dense"]["target_hit@10"]["mean"] + 0.3
    for mode, row in rows.items():
        assert row["funnel"]["served"] == pytest.approx(row["label_vote_acc@10"]["mean"], abs=1e-4)
        assert row["latency_p50_ms"] > 0 and row["qps"] > 0
    assert rows["bm25"]["funnel"]["index_loss"] == 0  # no ANN stage in full-text search
    rec = summary["modes"]["recommendation"]
    assert rec["mode"] in ("dense", "hybrid-rrf", "hybrid-weighted", "bm25") and rec["reason"]
    report = (tmp_path / "report.md").read_text()
    assert "## Dense, BM25 and hybrid search" in report and "Recommendation: **" in report
    assert "search mode:" in res.output


def _modes(diffs, cis, task="t"):
    rows = {m: {"vs_dense": {"diff": d, "ci": c}, "latency_p50_vs_dense": 2.0, "t": {"mean": 0.5}}
            for m, d, c in zip(["dense", "bm25", "hybrid-rrf", "hybrid-weighted"], diffs, cis)}
    return {"task": task, "modes": rows, "task_metrics": ["t"]}


def test_recommend_hybrid_follows_the_paired_confidence_interval():
    zero = [0.0, 0.0]
    on = recommend_hybrid(_modes([0, -0.1, 0.03, 0.01], [zero, [-0.2, -0.05], [0.01, 0.05], [-0.01, 0.03]]))
    assert on["mode"] == "hybrid-rrf" and "2.0x" in on["reason"]
    off = recommend_hybrid(_modes([0, -0.1, 0.02, 0.01], [zero, [-0.2, -0.05], [-0.01, 0.05], [-0.02, 0.03]]))
    assert off["mode"] == "dense"
    lexical = recommend_hybrid(_modes([0, 0.2, 0.1, 0.05], [zero, [0.1, 0.3], [0.05, 0.15], [0.0, 0.1]]))
    assert lexical["mode"] == "bm25"
    assert recommend_hybrid({"task": None, "modes": {}})["mode"] == "dense"
