"""Render a tools/bench_index.py JSON into Markdown tables and PNG plots (for docs/benchmarks.md).

    .venv/bin/python tools/bench_report.py docs/benchmarks/bench_index.json --out docs/benchmarks

Writes OUT/results.md (every table) and OUT/<dataset>-recall-qps.png, OUT/<dataset>-recall-latency.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit.summary import frontier  # noqa: E402

MB = 1e6
BUILD_HIDDEN = ("files", "command", "timings_s", "versions", "disk_bytes", "disk_index_bytes")
STYLE = {"vdb": ("tab:red", "o"), "faiss-ivf-flat": ("tab:blue", "s"), "faiss-ivf-sq8": ("tab:cyan", "D"),
         "faiss-hnsw": ("tab:green", "^"), "diskann": ("tab:purple", "v"), "lancedb": ("tab:orange", "P")}


def fmt(v, digits=3, scale=1.0):
    if v is None:
        return "n/a"
    v = v / scale
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:,.{max(0, digits - len(str(int(abs(v)))))}f}"


def ram_bytes(s: dict) -> tuple[int | None, int | None]:
    """(model/serialized bytes, measured RSS delta) of one system."""
    ram = s.get("ram") or {}
    if s["system"] == "vdb":
        return ram["resident_bytes"]["total"], ram["rss_after_open"]["VmRSS_delta"]
    if s["system"].startswith("faiss"):
        return ram["serialized_bytes"], ram["rss_after_load"]["RssAnon_delta"]
    after = ram.get("ram_after_runs") or {}
    files = (s.get("disk") or {}).get("files") or {}
    model = sum(v for k, v in files.items() if "_pq_" in k) if s["system"] == "diskann" else None
    return model or None, after.get("RssAnon_delta")


def disk_bytes(s: dict):
    d = s.get("disk")
    return None if not d else d.get("total")


def at(s: dict, key: str):
    v = (s.get("summary") or {}).get(key) or {}
    return v.get("value"), v.get("bracketed", True)


def headline(ds: dict) -> list[str]:
    rows = ["| system | QPS @0.90 | p50 ms @0.90 | p99 ms @0.90 | QPS @0.95 | p50 ms @0.95 | cold p50 ms @0.90 | "
            "cold QPS @0.90 | best recall | build s | RAM model MB | RAM RSS MB | disk MB |",
            "|---|" + "---|" * 12]
    for s in ds["systems"]:
        if "error" in s:
            rows.append(f"| {s['system']} | failed: {s['error'][:120]} |" + " |" * 11)
            continue
        cells = []
        for key in ("qps@0.90", "p50_ms@0.90", "p99_ms@0.90", "qps@0.95", "p50_ms@0.95", "cold_p50_ms@0.90",
                    "cold_qps@0.90"):
            v, bracketed = at(s, key)
            cells.append(_bound(v, bracketed, "≥" if "qps" in key else "≤"))
        model, rss = ram_bytes(s)
        cells += [fmt(s["summary"]["best_recall"], 4), fmt(s["build"]["build_s"]),
                  fmt(model, scale=MB), fmt(rss, scale=MB),
                  fmt(disk_bytes(s), scale=MB) if disk_bytes(s) else "0 (RAM)"]
        rows.append(f"| {s['system']} | " + " | ".join(cells) + " |")
    return rows


def params_str(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items())


def points_table(s: dict, task: bool) -> list[str]:
    head = "| params | recall@10 |" + (" book vote acc@10 |" if task else "") + \
           " QPS warm | p50 ms | p99 ms | cold p50 ms | cold p99 ms | cold QPS | cold KB read/q |" + \
           (" stats KB/q | postings/q | prefetch cold p50 ms | prefetch cold QPS |" if s["system"] == "vdb" else "")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for p in s["points"]:
        w, c = p["warm"], p.get("cold") or {}
        cells = [params_str(p["params"]), fmt(p["recall"], 4)]
        if task:
            cells.append(fmt(p.get("book_vote_acc@10"), 4))
        cells += [fmt(w["qps"]), fmt(w["p50_ms"]), fmt(w["p99_ms"]), fmt(c.get("p50_ms")), fmt(c.get("p99_ms")),
                  fmt(c.get("qps")), fmt(c.get("read_bytes_per_query"), scale=1e3)]
        if s["system"] == "vdb":
            pq, pf = p.get("per_query", {}), p.get("cold_prefetch") or {}
            cells += [fmt(pq.get("bytes_read"), scale=1e3), fmt(pq.get("postings_probed")), fmt(pf.get("p50_ms")),
                      fmt(pf.get("qps"))]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def targets_table(targets: list[dict]) -> list[str]:
    rows = ["| target | vdb | reference | ratio / factor | met |", "|---|---|---|---|---|"]
    for t in targets:
        if "vs" in t:
            ref = ", ".join(f"{k}: {fmt(v)}x" for k, v in t["vs"].items() if v is not None)
            rows.append(f"| {t['target']} | {fmt(t['vdb'])} ms | vdb/peer p50: {ref} | | {_met(t['met'])} |")
        elif "ratio" in t:
            rows.append(f"| {t['target']} | {fmt(t['vdb'])} QPS | {fmt(t['peer'])} QPS | {fmt(t['ratio'])}x | "
                        f"{_met(t['met'])} |")
        elif "fraction" in t:
            rows.append(f"| {t['target']} | {fmt(t['vdb'], scale=MB)} MB model, {fmt(t['rss'], scale=MB)} MB RSS | "
                        f"{fmt(t['float32'], scale=MB)} MB float32 | {fmt(t['fraction'])} (RSS "
                        f"{fmt(t['rss_fraction'])}) | {_met(t['met'])} |")
        elif "factor" in t:
            rows.append(f"| {t['target']} | {fmt(t['vdb'], scale=MB)} MB | {fmt(t['int8'], scale=MB)} MB INT8 | "
                        f"{fmt(t['factor'])}x | {_met(t['met'])} |")
        else:
            rows.append(f"| {t['target']} | {fmt(t['vdb'])} s | | | {_met(t['met'])} |")
    return rows


def _bound(v, bracketed: bool, sign: str) -> str:
    """A value at a recall target; a bound (sign) when the sweep's lowest point already exceeds the target."""
    return fmt(v) if bracketed or v is None else sign + fmt(v)


def _met(m) -> str:
    return "n/a" if m is None else ("**yes**" if m else "**no**")


def scaling_table(result: dict, main_name: str) -> list[str]:
    rows = ["| n | system | build s | RAM model MB | RAM RSS MB | disk MB | QPS @0.90 | p50 ms @0.90 |",
            "|---|---|---|---|---|---|---|---|"]
    entries = [(r["n"], s) for r in result.get("scaling", []) for s in r["systems"]]
    entries += [(int(main_name.split("-")[1][:-1]) * 1000, s) for s in result["datasets"][main_name]["systems"]
                if s["system"] in ("vdb", "faiss-ivf-sq8")]
    for n, s in sorted(entries, key=lambda e: (e[1]["system"], e[0])):
        if "error" in s:
            rows.append(f"| {n:,} | {s['system']} | failed: {s['error'][:80]} | | | | | |")
            continue
        model, rss = ram_bytes(s)
        q, qb = at(s, "qps@0.90")
        p, pb = at(s, "p50_ms@0.90")
        rows.append(f"| {n:,} | {s['system']} | {fmt(s['build']['build_s'])} | {fmt(model, scale=MB)} | "
                    f"{fmt(rss, scale=MB)} | {fmt(disk_bytes(s), scale=MB) if disk_bytes(s) else '0 (RAM)'} | "
                    f"{_bound(q, qb, '≥')} | {_bound(p, pb, '≤')} |")
    return rows


def int8_table(study: dict) -> list[str]:
    task = any("book_vote_acc@10" in r for r in study["rows"].values())
    rows = [f"| {study['dataset']} ({study['metric']}, {study['queries']:,} queries) | recall@10 | "
            + ("book vote acc@10 | section vote acc@10 | " if task else "") + "bytes/vector | mean rel. error |",
            "|---|---|" + ("---|---|" if task else "") + "---|---|"]
    for name, r in study["rows"].items():
        rows.append(f"| {name} | {fmt(r['recall'], 4)} | "
                    + (f"{fmt(r.get('book_vote_acc@10'), 4)} | {fmt(r.get('section_vote_acc@10'), 4)} | "
                       if task else "") + f"{r['bytes_per_vector']} | {fmt(r['mean_relative_error'], 3)} |")
    return rows


def plot(ds_name: str, ds: dict, out: Path) -> list[Path]:
    made = []
    for what, key, ylabel, log in (("qps", "qps", "queries/s, 1 thread, batch (log)", True),
                                   ("latency", "p50_ms", "single-query p50 ms (log)", True)):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for s in ds["systems"]:
            if "error" in s or not s.get("points"):
                continue
            color, marker = STYLE.get(s["system"], ("gray", "x"))
            higher = key == "qps"
            for phase, ls, mfc in (("warm", "-", color), ("cold", "--", "none")):
                pts = [p for p in s["points"] if p.get(phase)]
                if not pts:
                    continue
                value = (lambda p, phase=phase: p[phase][key])
                ax.scatter([p["recall"] for p in pts], [value(p) for p in pts], marker=marker, s=12,
                           facecolors=mfc, edgecolors=color, alpha=0.5, lw=0.8)
                front = frontier(pts, value, higher)
                ax.plot([r for r, _ in front], [v for _, v in front], ls=ls, color=color, lw=1.3,
                        label=f"{s['system']} {phase}")
        ax.axvline(0.90, color="gray", lw=0.6, ls=":")
        ax.axvline(0.95, color="gray", lw=0.6, ls=":")
        ax.set_xlabel("recall@10")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        recalls = [p["recall"] for s in ds["systems"] for p in s.get("points", [])] or [0.5]
        ax.set_xlim(left=max(0.5, min(recalls)))
        ax.set_title(f"{ds_name}: recall@10 vs {what}; lines: Pareto frontier, dashed: cold page cache",
                     fontsize=9)
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / f"{ds_name}-recall-{what}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def render(result: dict, out: Path) -> str:
    lines = ["# bench_index results (generated by tools/bench_report.py)", "",
             f"Command: `{result['command']}`  ", f"Git revision: `{result['git_revision']}`; wall "
             f"{result['wall_s']:.0f} s; machine: {result['machine']['cpu']} ({result['machine']['cpus']} CPUs), "
             f"faiss {result['machine']['faiss']}, numpy {result['machine']['numpy']}; load average at start "
             f"{result['machine']['loadavg_start']}, at end {result['machine']['loadavg_end']}.", ""]
    for name, ds in result["datasets"].items():
        task = name == "kjv"
        lines += [f"## {name}", "", ds["description"], "", "### At the recall targets", ""] + headline(ds)
        targets = result["summary"][name]["targets"]
        if targets:
            lines += ["", "### Targets", ""] + targets_table(targets)
        for s in ds["systems"]:
            lines += ["", f"### {s['system']}", ""]
            if "error" in s:
                lines.append(f"Failed: `{s['error']}`")
                continue
            build = {k: v for k, v in s["build"].items() if k not in BUILD_HIDDEN}
            lines += [f"Build: `{json.dumps(build)}`", ""]
            lines += points_table(s, task)
        for p in plot(name, ds, out):
            lines += ["", f"![{p.stem}]({p.name})"]
        lines.append("")
    lines += ["## Scaling (synthetic prefixes)", ""] + scaling_table(result, next(iter(result["datasets"])))
    for study in result.get("int8", []):
        lines += ["", f"## INT8 variants: {study['dataset']}", ""] + int8_table(study)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--out", default="docs/benchmarks")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = json.loads(Path(a.json).read_text())
    (out / "results.md").write_text(render(result, out))
    print(f"wrote {out / 'results.md'}")


if __name__ == "__main__":
    main()
