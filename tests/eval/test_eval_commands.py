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


def test_server_option_exists_but_is_not_available_yet():
    res = CliRunner().invoke(eval_command, [TINY, "--server", "127.0.0.1:50051"])
    assert res.exit_code == 1 and "not available yet" in res.output and "Traceback" not in res.output


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
