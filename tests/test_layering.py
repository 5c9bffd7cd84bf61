"""The architecture, checked by parsing the code: dependencies point one way (vdb -> index -> storage; inside vdb,
service and eval sit on top of the engine), only the service speaks gRPC, nothing reaches through `.files.` into
storage or into another object's private fields, and no module grows past MAX_LINES."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = {"vdb/v1"}  # protobuf stubs (tools/gen_proto.py)
MAX_LINES = 400
# A module may exceed MAX_LINES only here, with a ceiling it must not grow past and the reason it is one file.
LONG_MODULES = {
    # one lock guards one state machine (buffer, write, fsync, rotation); split, its invariants would span files
    "storage/wal/writer.py": 500,
}

# package -> packages (or modules) it must never import
FORBIDDEN = {
    "storage": {"index", "vdb"},
    "index": {"vdb"},
    "vdb.query": {"vdb.engine", "vdb.cache", "vdb.service", "vdb.eval", "vdb.cli", "vdb.cluster"},
    "vdb.cache": {"vdb.engine", "vdb.service", "vdb.eval", "vdb.cli", "vdb.cluster"},
    "vdb.engine": {"vdb.service", "vdb.eval", "vdb.cli", "vdb.cluster"},
    "vdb.service": {"vdb.engine", "vdb.eval", "vdb.cli", "vdb.cluster"},  # the VectorDB interface only
    "vdb.inputs": {"vdb.engine", "vdb.cache", "vdb.service", "vdb.eval", "vdb.cli", "vdb.cluster"},
    "vdb.text": {"vdb.engine", "vdb.cache", "vdb.service", "vdb.eval", "vdb.cli", "vdb.integrations", "vdb.cluster"},
    "vdb.integrations": {"vdb.engine", "vdb.service", "vdb.eval", "vdb.cli", "vdb.cluster"},  # the public API only
    "vdb.cluster": {"vdb.eval", "vdb.cli", "vdb.integrations"},  # on top of engine and service, beside eval
}
GRPC_ALLOWED = ("vdb/service/", "vdb/v1/", "vdb/errors.py")  # vdb/errors.py: the status codes errors carry


def _modules(package: str):
    base = ROOT / package.replace(".", "/")
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not any(rel.startswith(g) for g in GENERATED):
            yield rel, path


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _hits(imported: set[str], forbidden: set[str]) -> set[str]:
    return {f for f in forbidden for name in imported if name == f or name.startswith(f + ".")}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package):
    offenders = [f"{rel} imports {sorted(bad)}" for rel, path in _modules(package)
                 if (bad := _hits(_imports(path), FORBIDDEN[package]))]
    assert not offenders, "layering violated:\n" + "\n".join(offenders)


def test_only_the_service_speaks_grpc():
    offenders = [rel for package in ("vdb", "index", "storage") for rel, path in _modules(package)
                 if _hits(_imports(path), {"grpc", "grpc_health", "grpc_reflection"})
                 and not rel.startswith(GRPC_ALLOWED)]
    assert not offenders, f"gRPC imported outside vdb/service: {offenders}"


def _reach_throughs(path: Path) -> list[str]:
    """`x.files.y` (storage reached through an index) and `x._private` for any x but self / cls."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        if node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                out.append(f"line {node.lineno}: {ast.unparse(node)} (another object's private state)")
        if isinstance(node.value, ast.Attribute) and node.value.attr == "files":
            out.append(f"line {node.lineno}: {ast.unparse(node)} (storage reached through .files)")
    return out


@pytest.mark.parametrize("package", ["vdb", "index", "storage"])
def test_no_object_reaches_into_another(package):
    offenders = []
    for rel, path in _modules(package):
        found = _reach_throughs(path)
        if package != "vdb":  # the index may use its own IndexDir (self.files.x); only private access counts
            found = [f for f in found if "private" in f]
        offenders += [f"{rel} {f}" for f in found]
    assert not offenders, "\n".join(offenders)


def test_no_module_grows_past_its_limit():
    too_long = []
    for package in ("vdb", "index", "storage"):
        for rel, path in _modules(package):
            n = len(path.read_text().splitlines())
            if n > LONG_MODULES.get(rel, MAX_LINES):
                too_long.append(f"{rel}: {n} lines (limit {LONG_MODULES.get(rel, MAX_LINES)})")
    assert not too_long, "split these modules by concept:\n" + "\n".join(too_long)


def test_the_checks_catch_what_they_claim(tmp_path):
    """The parsers above must see real violations (otherwise every test here would pass vacuously)."""
    sample = tmp_path / "sample.py"
    sample.write_text("import grpc\nfrom vdb.service.client import Client\n"
                      "def f(c):\n    return c._failed, c.index.files.meta.lookup\n")
    assert _hits(_imports(sample), {"vdb.service", "grpc"}) == {"vdb.service", "grpc"}
    found = _reach_throughs(sample)
    assert any("c._failed" in f for f in found) and any(".files" in f for f in found)


def test_every_public_method_of_the_api_is_documented():
    import inspect

    import vdb
    from index import FlatIndex, SpannIndex
    from index.mutable import MutableSpannIndex
    from vdb.service.router import Router
    missing = []
    for cls in (vdb.Database, vdb.Client, Router, SpannIndex, FlatIndex, MutableSpannIndex, vdb.SearchResult):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not (callable(member) or isinstance(member, property)):
                continue
            doc = member.fget.__doc__ if isinstance(member, property) else member.__doc__
            if not doc:
                missing.append(f"{cls.__name__}.{name}")
    missing += [f"vdb.{n}" for n in vdb.__all__ if not getattr(vdb, n).__doc__]
    assert not missing, f"undocumented: {missing}"
