"""Writes an EvalResult to `--out`: points.jsonl (one row per operating point), summary.json (funnel,
meta-features, recommendation and its check, rankings, exact-search table), report.md and the PNG plots.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from vdb.eval import plots
from vdb.eval.runner import EvalResult

log = logging.getLogger(__name__)
CDF_VDB_POINTS = 5


def write_outputs(result: EvalResult, out_dir: str | Path, *, command: str = "") -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"points": out / "points.jsonl", "summary": out / "summary.json", "report": out / "report.md"}
    with open(paths["points"], "w") as f:
        for row in result.points:
            f.write(json.dumps(json_safe(row), default=_json_default, sort_keys=True) + "\n")
    summary = summary_dict(result, command)
    paths["summary"].write_text(json.dumps(json_safe(summary), indent=2, default=_json_default, sort_keys=True) + "\n")
    paths.update(write_plots(result, out))
    paths["report"].write_text(render_markdown(result, summary, {k: v.name for k, v in paths.items()}))
    return paths


def summary_dict(r: EvalResult, command: str = "") -> dict:
    return {"command": command, "dataset": r.dataset, "config": r.config, "metric": r.metric, "task": r.task,
            "exact": r.exact, "exact_int8": r.exact_int8, "funnel": r.funnel.as_dict() if r.funnel else None,
            "saturation": r.saturation, "metafeatures": r.metafeatures.as_dict(),
            "recommendation": r.recommendation.as_dict(), "recommendation_text": r.recommendation.render(),
            "check": r.check.as_dict() if r.check else None, "rankings": r.rankings, "machine": r.machine,
            "git_revision": r.git_revision, "timings_s": r.timings_s, "n_points": len(r.points), "modes": r.modes}


def write_plots(r: EvalResult, out: Path) -> dict[str, Path]:
    k = r.config["k"]
    paths = {"qps_vs_recall": plots.qps_vs_recall(_ann(r.points), out / "qps_vs_recall.png", k=k)}
    if r.task and r.points:
        names = [n for n in task_metric_names_from(r) if n in r.points[0]]
        focus = next((p["system"] for p in r.points if p["kind"] == "vdb" and p["metric"] == r.metric), "")
        exact = {m: r.exact[m][r.task]["mean"] for m in r.exact}
        paths["task_vs_recall"] = plots.task_vs_recall(_ann(r.points), names, r.task, focus,
                                                       out / "task_vs_recall.png", k=k, exact=exact)
    if r.funnel:
        paths["funnel"] = plots.funnel_waterfall(r.funnel.stages(), r.funnel.final, r.task, out / "funnel.png")
    paths["latency_cdf"] = plots.latency_cdf(_cdf_selection(r), out / "latency_cdf.png")
    return paths


def task_metric_names_from(r: EvalResult) -> list[str]:
    return list(r.exact[r.metric])


def _ann(points: list[dict]) -> list[dict]:
    return [p for p in points if p["family"] != "exact"]


def _cdf_selection(r: EvalResult) -> dict[str, np.ndarray]:
    """Up to CDF_VDB_POINTS of vdb's own points at the evaluated metric, then each other system's best point."""
    chosen = [p for p in r.points if p["kind"] == "vdb" and p["metric"] == r.metric and not p["build"]]
    picks = [p["label"] for p in chosen[:: max(1, -(-len(chosen) // CDF_VDB_POINTS))]]
    key = r.task or "recall"
    for name in dict.fromkeys(p["system"] for p in r.points if p["metric"] == r.metric):
        if not name.startswith("vdb"):
            pts = [p for p in r.points if p["system"] == name]
            picks.append(max(pts, key=lambda p: (p[key], p["qps"]))["label"])
    return {label: r.latencies[label] for label in picks if label in r.latencies}


# -- markdown ---------------------------------------------------------------------------------------------------
def render_markdown(r: EvalResult, summary: dict, files: dict[str, str]) -> str:
    ds, k = r.dataset, r.config["k"]
    lines = [f"# Evaluation: {ds['name']}", "",
             f"{ds['description']}  ",
             f"{ds['n']:,} base x {ds['nq']:,} queries, dim {ds['dim']}; evaluated metric **{r.metric}**; "
             f"k = {k}; primary task metric **{r.task or 'none (no labels/targets: recall only)'}**.", "",
             f"Command: `{summary['command']}`  ",
             f"Git revision: `{r.git_revision}`; machine: {r.machine['cpu']} ({r.machine['cpus']} CPUs), "
             f"faiss {r.machine['faiss']}, numpy {r.machine['numpy']}; seed {r.config['seed']}.", ""]
    lines += _exact_section(r) + _funnel_section(r, files) + _tree_section(r) + _points_section(r)
    lines += _modes_section(r) + _rankings_section(r) + _plots_section(files)
    return "\n".join(lines) + "\n"


def _exact_section(r: EvalResult) -> list[str]:
    names = task_metric_names_from(r)
    if not names:
        return []
    out = ["## Exact search by metric (raw vectors)", "",
           "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m, est in r.exact.items():
        out.append(f"| {m} | " + " | ".join(_f(est[n]["mean"]) for n in names) + " |")
    out.append(f"| int8 ({r.metric}) | " + " | ".join(_f(r.exact_int8[n]) for n in names) + " |")
    return out + [""]


def _funnel_section(r: EvalResult, files: dict) -> list[str]:
    if not r.funnel:
        return []
    f = r.funnel
    out = [f"## Information-loss funnel ({f.task})", "",
           f"Ceiling (exact, best metric = {f.best_metric}): {_f(f.ceiling)}; exact with {f.chosen_metric}: "
           f"{_f(f.exact_chosen)}; served point: `{f.served_point}` -> {_f(f.served)}.", "",
           "| stage | loss | 95% CI (paired bootstrap) |", "|---|---|---|"]
    for name, loss in f.stages():
        ci = f.ci.get(name)
        out.append(f"| {name} | {'not measured' if loss is None else f'{loss:+.4f}'} | "
                   f"{'' if not ci else f'[{ci[0]:+.4f}, {ci[1]:+.4f}]'} |")
    out += ["", f"![funnel]({files.get('funnel', 'funnel.png')})", ""]
    sat = r.saturation
    for scope, s in sat.items():
        out.append(f"Saturation ({scope}, cheapest by {s['cost_key']} reaching 99% of exact): `{s['label']}` "
                   f"({f.task} {_f(s['task'])})." if s else f"Saturation ({scope}): no point reaches 99% of exact.")
    return out + [""]


def _tree_section(r: EvalResult) -> list[str]:
    mf = r.metafeatures.as_dict()
    out = ["## Meta-features and recommendation", "", "| feature | value |", "|---|---|"]
    out += [f"| {key} | {value} |" for key, value in mf.items()]
    out += ["", "```", r.recommendation.render(), "```", ""]
    if r.check:
        c = r.check
        out += [f"Check against the sweep: metric {c.recommended_metric} vs best measured {c.best_metric} "
                f"({'agrees' if c.metric_ok else f'disagrees, costs {c.metric_cost:+.4f}'}); within Iceberg's "
                f"l2/ip choice the better one is {c.tree_metric} ({'agrees' if c.tree_metric_ok else 'disagrees'}); "
                f"family {c.recommended_family} vs measured {c.best_family} (`{c.best_point}`); "
                f"nprobe {c.recommended_nprobe} recommended vs {c.measured_nprobe} measured at saturation."]
        out += [f"- {note}" for note in c.notes]
    return out + [""]


def _points_section(r: EvalResult) -> list[str]:
    extra = [n for n in task_metric_names_from(r) if n != r.task][:2]
    cols = ["recall"] + ([r.task] if r.task else []) + extra
    out = ["## Operating points", "",
           "| point | " + " | ".join(cols)
           + " | QPS | p50 ms | p95 ms | p99 ms | MB read/q | build s | RAM MB | disk MB |",
           "|---" * (len(cols) + 9) + "|"]
    for p in r.points:
        out.append(f"| {p['label']} | " + " | ".join(_f(p.get(c)) for c in cols)
                   + f" | {p['qps']:,.0f} | {_f(p.get('latency_p50_ms'), 3)} | {_f(p.get('latency_p95_ms'), 3)}"
                   + f" | {_f(p.get('latency_p99_ms'), 3)} | {_mb(p.get('bytes_read_per_query'), 3)}"
                   + f" | {_f(p['build_s'], 2)} | {_mb(p['ram_bytes'])} | {_mb(p['disk_bytes'])} |")
    return out + [""]


def _modes_section(r: EvalResult) -> list[str]:
    if not r.modes:
        return []
    m, names = r.modes, [n for n in r.modes["task_metrics"] if n != "dense_overlap"]
    task = m["task"]
    out = ["## Dense, BM25 and hybrid search", "",
           f"One collection with the texts (BM25 over `text`); fusion over the top {m['candidates']} of each list; "
           f"one thread. `exact` uses exact dense neighbours, `served` vdb's index; the difference to dense is "
           f"paired over queries.", "",
           "| mode | " + " | ".join(names) + f" | {task} exact | {task} - dense [95% CI] | overlap with dense "
           "| QPS | p50 ms | p99 ms | p50 vs dense |", "|---" * (len(names) + 7) + "|"]
    for mode, row in m["modes"].items():
        vs = row.get("vs_dense", {})
        ci = vs.get("ci")
        out.append(f"| {mode} | " + " | ".join(_f(row[n]["mean"]) for n in names)
                   + f" | {_f(row.get('funnel', {}).get('exact'))} | {_f(vs.get('diff'))}"
                   + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
                   + f" | {_f(row['dense_overlap']['mean'])} | {row['qps']:,.0f} | {_f(row.get('latency_p50_ms'), 3)}"
                   + f" | {_f(row.get('latency_p99_ms'), 3)} | {row['latency_p50_vs_dense']}x |")
    rec = m.get("recommendation")
    if rec:
        out += ["", f"Recommendation: **{rec['mode']}** ({rec['reason']})."]
    return out + [""]


def _rankings_section(r: EvalResult) -> list[str]:
    if not r.rankings:
        return []
    pts, sys_ = r.rankings["points"], r.rankings["systems"]
    out = ["## Rankings: recall vs task", "",
           f"Kendall tau between recall@{r.config['k']} and {r.task} over all {len(pts['by_recall'])} points: "
           f"{pts['kendall_tau']}.", ""]
    if pts["discordant"]:
        out += ["Largest disagreements (more recall, less task):", ""]
        out += [f"- `{d['more_recall']}` recall {_f(d['recall'][0])} / task {_f(d['task'][0])} vs "
                f"`{d['better_task']}` recall {_f(d['recall'][1])} / task {_f(d['task'][1])}"
                for d in pts["discordant"]]
        out.append("")
    out += [f"Systems by best QPS at recall >= {sys_['recall_target']} vs at {r.task} >= {sys_['task_target']} "
            f"(99% of exact); Kendall tau {sys_['kendall_tau']}.", "",
            "| system | QPS at recall target | QPS at task target | max recall | max task |", "|---|---|---|---|---|"]
    for name in sys_["by_recall"]:
        s = sys_["scores"][name]
        out.append(f"| {name} | {s['qps_at_recall']:,.0f} | {s['qps_at_task']:,.0f} | {_f(s['max_recall'])} | "
                   f"{_f(s['max_task'])} |")
    return out + [""]


def _plots_section(files: dict) -> list[str]:
    out = ["## Plots", ""]
    for key in ("qps_vs_recall", "task_vs_recall", "latency_cdf"):
        if key in files:
            out.append(f"![{key}]({files[key]})")
    return out


def _f(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def _mb(x, digits: int = 1) -> str:
    return "-" if x is None else f"{x / 1e6:.{digits}f}"


def json_safe(o):
    """JSON has no NaN/Inf: write them as null (recursively)."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _json_default(o):
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
