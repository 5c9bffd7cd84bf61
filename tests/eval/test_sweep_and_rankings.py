"""Sweep files (JSON/TOML) and the recall-vs-task rankings."""
from __future__ import annotations

import json

import pytest

from vdb.eval.errors import SweepSpecError
from vdb.eval.rankings import rank_points, rank_systems
from vdb.eval.sweep import default_sweep, load_sweep


def test_default_sweep_has_every_system_and_peers_only_when_asked():
    spec = default_sweep("cosine", 10_000)
    assert [s.kind for s in spec.systems] == ["vdb", "faiss-flat", "faiss-ivf", "faiss-hnsw"]
    assert {"nprobe": 64, "rerank_k": 256} in spec.systems[0].search
    peers = default_sweep("cosine", 10_000, peer_metrics=("l2", "ip", "cosine"))
    assert {(s.kind, s.metric) for s in peers.systems[4:]} == {("vdb", "l2"), ("faiss-hnsw", "l2"),
                                                               ("vdb", "ip"), ("faiss-hnsw", "ip")}
    quick = default_sweep("l2", 10_000, quick=True)
    assert quick.count() < spec.count()


def test_toml_sweep_overrides_named_systems(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('peer_metrics = []\n'
                    '[[vdb]]\nbuild = { max_replicas = 4 }\nsearch = [ { nprobe = 8 }, { nprobe = 32, eps = 2.0 } ]\n'
                    '[[vdb]]\nsearch = [ { nprobe = 16 } ]\n'
                    '[faiss-ivf]\nbuild = { nlist = 64 }\n'
                    '[faiss-hnsw]\nenabled = false\n')
    spec = load_sweep(path, "l2", 5000)
    kinds = [s.kind for s in spec.systems]
    assert kinds.count("vdb") == 2 and "faiss-hnsw" not in kinds and "faiss-flat" in kinds
    variant = next(s for s in spec.systems if s.kind == "vdb" and s.build)
    assert variant.name == "vdb[l2|max_replicas=4]"
    assert variant.label({"nprobe": 8}) == "vdb[l2|max_replicas=4] nprobe=8"
    assert next(s for s in spec.systems if s.kind == "faiss-ivf").build == {"nlist": 64}


def test_json_sweep_and_its_errors(tmp_path):
    ok = tmp_path / "s.json"
    ok.write_text(json.dumps({"faiss-hnsw": False, "vdb": {"search": [{"nprobe": 3}]}}))
    spec = load_sweep(ok, "ip", 1000)
    assert [p for s in spec.systems if s.kind == "vdb" for p in s.search] == [{"nprobe": 3}]
    cases = [({"vdb": {"search": [{"nprobes": 3}]}}, "unknown knob"),
             ({"vdb": {"build": {"metric": "l2"}}}, "--metric"),
             ({"faiss-pq": {}}, "unknown key"),
             ({"vdb": {"search": []}}, "non-empty"),
             ({"peer_metrics": ["hamming"]}, "unknown metric")]
    for payload, message in cases:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(payload))
        with pytest.raises(SweepSpecError, match=message):
            load_sweep(bad, "l2", 1000)
    broken = tmp_path / "broken.toml"
    broken.write_text("[vdb\n")
    with pytest.raises(SweepSpecError, match="not valid TOML"):
        load_sweep(broken, "l2", 1000)


def _row(label, system, recall, task, qps, family="partition"):
    return {"label": label, "system": system, "family": family, "recall": recall, "t": task, "qps": qps}


ROWS = [_row("a1", "A", 0.80, 0.40, 1000), _row("a2", "A", 0.95, 0.44, 500),
        _row("w1", "W", 0.90, 0.30, 2000, "graph"), _row("w2", "W", 0.99, 0.31, 900, "graph"),
        _row("flat", "F", 1.0, 0.45, 100, "exact")]


def test_point_ranking_finds_the_flip():
    r = rank_points(ROWS, "t")
    assert r["by_recall"][:2] == ["flat", "w2"] and r["by_task"][:2] == ["flat", "a2"]
    assert r["discordant"][0] == {"more_recall": "w2", "recall": [0.99, 0.95], "better_task": "a2",
                                  "task": [0.31, 0.44], "task_gap": pytest.approx(0.13)}
    assert {(d["more_recall"], d["better_task"]) for d in r["discordant"]} == {
        ("w2", "a2"), ("w2", "a1"), ("w1", "a1")}
    assert -1 <= r["kendall_tau"] < 1


def test_system_ranking_by_recall_and_by_task():
    r = rank_systems(ROWS, "t", exact_task=0.44, recall_target=0.9)          # task bar 0.4356
    assert r["by_recall"] == ["W", "A"] and r["by_task"] == ["A", "W"]        # exact systems are not ranked
    assert r["scores"]["W"]["qps_at_task"] == 0.0 and r["scores"]["A"]["qps_at_task"] == 500
    assert r["kendall_tau"] == -1.0
