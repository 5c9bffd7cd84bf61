"""`vdbctl eval` / `vdbctl recommend`: documented, thin, and errors as one line."""
from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from vdb.eval.commands import eval_command, recommend_command

TINY = "synthetic:n=1500,nq=60,dim=8,clusters=6"


@pytest.mark.parametrize("command, name", [(eval_command, "eval"), (recommend_command, "recommend")])
def test_commands_are_documented(command, name):
    assert isinstance(command, click.Command) and command.name == name
    out = CliRunner().invoke(command, ["--help"]).output
    assert "Example:" in out and f"vdbctl {name}" in out
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"--{param.name} has no help"


def test_unreachable_server_is_one_error_line(tmp_path):
    res = CliRunner().invoke(eval_command, [TINY, "--quick", "--out", str(tmp_path), "-q", "--server",
                                            "127.0.0.1:9"])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and "Traceback" not in res.output


def test_eval_against_a_running_server_measures_the_cache(tmp_path):
    import vdb
    from vdb.config import load_settings
    from vdb.service.server import create_server
    db = vdb.connect(tmp_path / "data", cache_mb=16, cache_shadow_rate=1.0)
    server, port = create_server(db, load_settings({"port": 0}))
    server.start()
    try:
        res = CliRunner().invoke(eval_command, [TINY, "--quick", "--out", str(tmp_path / "out"), "-q",
                                                "--latency-queries", "5", "--server", f"127.0.0.1:{port}"])
        assert res.exit_code == 0, res.output
        rows = [json.loads(line) for line in (tmp_path / "out" / "points.jsonl").read_text().splitlines()]
        service = [r for r in rows if r["kind"] == "vdb-service"]
        assert service and not [r for r in rows if r["kind"] == "vdb"]  # vdb measured over the wire only
        cached = [r for r in service if r["search"]["use_cache"]]
        assert cached and cached[0]["cache_hits_per_query"] > 0.9 and cached[0]["cache_false_hits_per_query"] == 0
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["funnel"]["served_cached"] is not None
        assert db.list_collections() == []  # the temporary collection was dropped
    finally:
        server.stop(0)
        db.close()


def test_bad_dataset_is_one_error_line():
    res = CliRunner().invoke(recommend_command, ["/no/such/dataset"])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and res.output.count("\n") == 1


def test_eval_quick_writes_the_report(tmp_path):
    res = CliRunner().invoke(eval_command, [TINY, "--quick", "--out", str(tmp_path), "-q", "--latency-queries", "10"])
    assert res.exit_code == 0, res.output
    assert "report:" in res.output and (tmp_path / "report.md").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["command"].startswith(f"vdbctl eval {TINY} --out") and "--quick" in summary["command"]


def test_recommend_prints_the_path_with_values(tmp_path):
    res = CliRunner().invoke(recommend_command, [TINY])
    assert res.exit_code == 0, res.output
    assert "[metric] DBI_E" in res.output and "[method] RA" in res.output and "max_replicas" in res.output
    res = CliRunner().invoke(recommend_command, [TINY, "--check", "--json", "-q"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["check"]["best_metric"] in ("l2", "ip", "cosine") and payload["recommendation"]["path"]
