"""What a sweep runs: systems (kind, metric, build knobs) and their operating points (query knobs).

Defaults: vdb over an nprobe ladder (plus one deeper float32 re-rank point), faiss Flat, IVF-Flat over nprobe,
HNSW(M=32) over efSearch, all at the evaluated metric. Outside --quick, when the raw vectors' norms vary,
vdb and HNSW also run at the *other* metrics ("metric peers"): they score well on recall against their own
metric's exact neighbours, and the task metric shows what that recall is worth (Iceberg's ranking flip).

A sweep file (JSON or TOML) overrides the systems it names and keeps the defaults for the others:

    peer_metrics = ["l2"]                 # metrics the vdb / HNSW peers also run at ([] = none)
    [vdb]                                 # or [[vdb]] several times, one per build variant
    build  = { max_replicas = 4 }         # index.BuildParams fields (not metric: that is --metric)
    search = [ { nprobe = 8 }, { nprobe = 32, rerank_k = 128 } ]   # index.SearchParams fields
    [faiss-ivf]
    build  = { nlist = 256 }
    search = [ { nprobe = 4 }, { nprobe = 16 } ]
    [faiss-hnsw]
    enabled = false                       # (JSON: "faiss-hnsw": false)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from index import BuildParams, SearchParams
from vdb.eval.baselines import BUILD_KEYS, SEARCH_KEYS, default_nlist
from vdb.eval.errors import SweepSpecError

KINDS = ("vdb", "faiss-flat", "faiss-ivf", "faiss-hnsw")
SERVICE_NPROBE = (8, 32)          # the service points: uncached and through the semantic cache
VDB_NPROBE = (1, 2, 4, 8, 16, 32, 64, 128, 256)
VDB_NPROBE_QUICK = (2, 8, 32, 128)
IVF_NPROBE = (1, 2, 4, 8, 16, 32, 64, 128)
IVF_NPROBE_QUICK = (2, 8, 32)
HNSW_EF = (10, 16, 32, 64, 128, 256)
HNSW_EF_QUICK = (16, 64)
PEER_NPROBE = (8, 32, 128)
PEER_EF = (16, 64, 256)


@dataclass(frozen=True)
class SystemSpec:
    kind: str
    metric: str
    build: dict
    search: tuple[dict, ...]

    @property
    def name(self) -> str:
        tag = ",".join(f"{k}={v}" for k, v in sorted(self.build.items()))
        return f"{self.kind}[{self.metric}{'|' + tag if tag else ''}]"

    def label(self, params: dict) -> str:
        knobs = " ".join(f"{k}={v}" for k, v in params.items())
        return f"{self.name} {knobs}".strip()


@dataclass(frozen=True)
class SweepSpec:
    systems: tuple[SystemSpec, ...]

    def count(self) -> int:
        return sum(len(s.search) for s in self.systems)


def default_sweep(metric: str, n: int, *, quick: bool = False, peer_metrics: tuple[str, ...] = (),
                  rerank_point: bool = True) -> SweepSpec:
    specs = [_default(kind, metric, n, quick, rerank_point) for kind in KINDS]
    for m in peer_metrics:
        if m != metric:
            specs.append(SystemSpec("vdb", m, {}, tuple({"nprobe": p} for p in PEER_NPROBE)))
            specs.append(SystemSpec("faiss-hnsw", m, {"M": 32}, tuple({"efSearch": e} for e in PEER_EF)))
    return SweepSpec(tuple(specs))


def _default(kind: str, metric: str, n: int, quick: bool, rerank_point: bool) -> SystemSpec:
    if kind == "vdb":
        points = [{"nprobe": p} for p in (VDB_NPROBE_QUICK if quick else VDB_NPROBE)]
        if rerank_point and not quick:
            points.append({"nprobe": 64, "rerank_k": 256})
        return SystemSpec("vdb", metric, {}, tuple(points))
    if kind == "faiss-flat":
        return SystemSpec(kind, metric, {}, ({},))
    if kind == "faiss-ivf":
        nlist = default_nlist(n)
        ladder = [p for p in (IVF_NPROBE_QUICK if quick else IVF_NPROBE) if p <= nlist]
        return SystemSpec(kind, metric, {"nlist": nlist}, tuple({"nprobe": p} for p in ladder))
    return SystemSpec(kind, metric, {"M": 32}, tuple({"efSearch": e} for e in (HNSW_EF_QUICK if quick else HNSW_EF)))


def load_sweep(path: str | Path, metric: str, n: int, *, quick: bool = False,
               peer_metrics: tuple[str, ...] = ()) -> SweepSpec:
    """The default sweep with the systems the file names replaced (see the module docstring)."""
    raw = _read(Path(path))
    peers = tuple(raw.pop("peer_metrics", peer_metrics))
    bad = [m for m in peers if m not in ("l2", "ip", "cosine")]
    unknown = set(raw) - set(KINDS)
    if bad or unknown:
        raise SweepSpecError(f"{path}: unknown {'metric(s) ' + str(bad) if bad else 'key(s) ' + str(sorted(unknown))}"
                             f"; systems are {', '.join(KINDS)}")
    base = default_sweep(metric, n, quick=quick, peer_metrics=peers)
    specs = [s for s in base.systems if s.kind not in raw]
    for kind, value in raw.items():
        specs += [_parse_system(kind, v, metric, n, quick, path) for v in _as_list(value)]
    return SweepSpec(tuple(s for s in specs if s is not None))


def _read(path: Path) -> dict:
    if not path.is_file():
        raise SweepSpecError(f"{path}: no such sweep file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as e:
        raise SweepSpecError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'} ({e})") from None
    if not isinstance(data, dict):
        raise SweepSpecError(f"{path}: the top level must be a table/object of systems")
    return data


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _parse_system(kind: str, value, metric: str, n: int, quick: bool, path) -> SystemSpec | None:
    if value is False or (isinstance(value, dict) and value.get("enabled", True) is False):
        return None
    if not isinstance(value, dict):
        raise SweepSpecError(f"{path}: {kind} must be a table with 'build' and/or 'search' (or false)")
    extra = set(value) - {"build", "search", "enabled"}
    if extra:
        raise SweepSpecError(f"{path}: {kind}: unknown key(s) {sorted(extra)}; use build, search, enabled")
    default = _default(kind, metric, n, quick, rerank_point=True)
    build = dict(value.get("build", {}))
    search = value.get("search", list(default.search))
    if not isinstance(search, list) or not all(isinstance(p, dict) for p in search) or not search:
        raise SweepSpecError(f"{path}: {kind}.search must be a non-empty list of tables of query knobs")
    _check_keys(kind, build, search, path)
    if kind == "faiss-ivf":
        build.setdefault("nlist", default_nlist(n))
    return SystemSpec(kind, metric, build, tuple(dict(p) for p in search))


def _check_keys(kind: str, build: dict, search: list[dict], path) -> None:
    if kind == "vdb":
        build_ok = {f.name for f in fields(BuildParams)} - {"metric"}
        search_ok = {f.name for f in fields(SearchParams)}
    else:
        build_ok, search_ok = BUILD_KEYS[kind], SEARCH_KEYS[kind]
    for where, keys, ok in [("build", set(build), build_ok)] + [("search", set(p), search_ok) for p in search]:
        if keys - ok:
            hint = " (the metric comes from --metric)" if "metric" in keys else ""
            raise SweepSpecError(f"{path}: {kind}.{where}: unknown knob(s) {sorted(keys - ok)}{hint}; "
                                 f"known: {', '.join(sorted(ok)) or 'none'}")


def with_service(spec: SweepSpec, metric: str, *, quick: bool, server: str | None, cache: bool) -> SweepSpec:
    """Add vdb served as a collection (embedded engine, or the running `server`): uncached and cached points.

    With a server, the embedded vdb index points are replaced: everything vdb is then measured over the wire."""
    points = []
    for p in (SERVICE_NPROBE[1:] if quick else SERVICE_NPROBE):
        points.append({"nprobe": p, "use_cache": False})
        if cache:
            points.append({"nprobe": p, "use_cache": True})
    systems = [s for s in spec.systems if not (server and s.kind == "vdb")]
    systems.append(SystemSpec("vdb-service", metric, {}, tuple(points)))
    return SweepSpec(tuple(systems))
