"""Derived numbers of a run: cost at a recall target (interpolated on each system's Pareto frontier) and the
targets of the index issue, with vdb's ratio against the peers measured in the same run.

"X at recall r" takes the system's frontier (points not beaten on both recall and X), and interpolates X
linearly in recall between the two frontier points around r. If the lowest point is already above r, its value
is reported as a bound (`bracketed: false`); if no point reaches r, the value is None.
"""
from __future__ import annotations


TARGET_RECALLS = (0.90, 0.95)
BUILD_LIMIT_S = 300
RAM_FRACTION = 0.10
DISK_FACTOR = 5.0


def frontier(points: list[dict], value, higher_better: bool) -> list[tuple[float, float]]:
    pts = [(p["recall"], value(p)) for p in points if value(p) is not None]
    pts.sort(key=lambda rv: (-rv[0], -rv[1] if higher_better else rv[1]))
    front, best = [], None
    for r, v in pts:  # descending recall: keep a point only if it beats every point of higher recall
        if best is None or (v > best if higher_better else v < best):
            front.append((r, v))
            best = v
    return front[::-1]


def at_recall(points: list[dict], target: float, value, higher_better: bool = True) -> dict:
    front = frontier(points, value, higher_better)
    above = [i for i, (r, _) in enumerate(front) if r >= target]
    if not above:
        return {"value": None, "bracketed": False, "note": f"no point reaches recall {target}"}
    i = above[0]
    if i == 0:
        return {"value": front[0][1], "bracketed": False, "between": [front[0]],
                "note": f"lowest point already has recall {front[0][0]:.4f}"}
    (r0, v0), (r1, v1) = front[i - 1], front[i]
    v = v0 + (target - r0) * (v1 - v0) / (r1 - r0) if r1 > r0 else v1
    return {"value": float(v), "bracketed": True, "between": [front[i - 1], front[i]]}


def _warm(key):
    return lambda p: (p.get("warm") or {}).get(key)


def _cold(key):
    return lambda p: (p.get("cold") or {}).get(key)


def system_summary(s: dict) -> dict:
    pts = s.get("points") or []
    out = {}
    for t in TARGET_RECALLS:
        tag = f"{t:.2f}"
        out[f"qps@{tag}"] = at_recall(pts, t, _warm("qps"))
        out[f"p50_ms@{tag}"] = at_recall(pts, t, _warm("p50_ms"), higher_better=False)
        out[f"p99_ms@{tag}"] = at_recall(pts, t, _warm("p99_ms"), higher_better=False)
        if any(p.get("cold") for p in pts):
            out[f"cold_p50_ms@{tag}"] = at_recall(pts, t, _cold("p50_ms"), higher_better=False)
            out[f"cold_qps@{tag}"] = at_recall(pts, t, _cold("qps"))
        ok = [p for p in pts if p["recall"] >= t]
        out[f"min_p50_ms_reaching_{tag}"] = min((p["warm"]["p50_ms"] for p in ok), default=None)
    out["best_recall"] = max((p["recall"] for p in pts), default=None)
    return out


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b not in (None, 0) else None


def targets(systems: dict, ds_n: int, dim: int) -> list[dict]:
    v = systems.get("vdb")
    if not v or "error" in v:
        return []
    sv = v["summary"]
    peer = {name: s.get("summary", {}) for name, s in systems.items()}
    f32 = ds_n * dim * 4
    int8 = ds_n * dim
    rows = []
    for t, limit in ((0.90, 1.0), (0.95, 2.0)):
        tag = f"{t:.2f}"
        p50 = sv[f"min_p50_ms_reaching_{tag}"]
        rows.append({"target": f"recall@10 >= {t} at single-query p50 <= {limit} ms (warm)",
                     "vdb": p50, "met": p50 is not None and p50 <= limit,
                     "vs": {n: _ratio(p50, peer[n].get(f"min_p50_ms_reaching_{tag}")) for n in peer if n != "vdb"},
                     "unit": "ms (lowest p50 among sweep points reaching the recall); vs = vdb / peer"})
    q = sv["qps@0.90"]["value"]
    sq8 = peer.get("faiss-ivf-sq8", {}).get("qps@0.90", {}).get("value")
    dk = peer.get("diskann", {}).get("qps@0.90", {}).get("value")
    rows.append({"target": "QPS at recall 0.90 (1 thread, batch) >= faiss IVF-SQ8", "vdb": q, "peer": sq8,
                 "ratio": _ratio(q, sq8), "met": None if sq8 is None or q is None else q >= sq8})
    rows.append({"target": "QPS at recall 0.90 (1 thread, batch) >= 2x diskannpy disk index", "vdb": q, "peer": dk,
                 "ratio": _ratio(q, dk), "met": None if dk is None or q is None else q >= 2 * dk})
    res = v["ram"]["resident_bytes"]["total"]
    rss = v["ram"]["rss_after_open"]["VmRSS_delta"]
    rows.append({"target": "resident RAM <= 10% of the raw float32 data", "vdb": res, "rss": rss, "float32": f32,
                 "fraction": round(res / f32, 4), "rss_fraction": round(rss / f32, 4),
                 "met": res <= RAM_FRACTION * f32 and rss <= RAM_FRACTION * f32})
    b = v["build"]["build_s"]
    rows.append({"target": f"build <= {BUILD_LIMIT_S} s on 2 cores", "vdb": b, "met": b <= BUILD_LIMIT_S,
                 "applies": ds_n >= 1_000_000})
    d = v["disk"]
    rows.append({"target": "disk <= 5x the INT8 data (posting file)", "vdb": d["postings"], "int8": int8,
                 "factor": round(d["postings"] / int8, 3), "met": d["postings"] <= DISK_FACTOR * int8})
    rows.append({"target": "disk <= 5x the INT8 data (total incl. float32 re-rank file)", "vdb": d["total"],
                 "int8": int8, "factor": round(d["total"] / int8, 3), "met": d["total"] <= DISK_FACTOR * int8})
    return rows


def summarize(result: dict) -> dict:
    out = {}
    for name, ds in result["datasets"].items():
        systems = {s["system"]: s for s in ds["systems"]}
        for s in ds["systems"]:
            if "error" not in s:
                s["summary"] = system_summary(s)
        first = next(s for s in ds["systems"] if s["system"] == "vdb")
        out[name] = {"targets": targets(systems, first["disk"]["n"], first["disk"]["dim"])}
    for row in result.get("scaling", []):
        for s in row["systems"]:
            if "error" not in s:
                s["summary"] = system_summary(s)
    return out
