"""A cluster started with API keys or TLS keeps them on every path: the router serves with the replicas' keys
(read-only too) and TLS, reaches the replicas over TLS, and no key lands in a log, a state file or a snapshot."""
from __future__ import annotations

import logging
import shutil
import subprocess

import numpy as np
import pytest

import vdb
from localcluster import LocalCluster
from vdb.cluster import rayside
from vdb.cluster.routing import RouterServer
from vdb.engine.snapshot import write_snapshot

KEY, READER = "full-key-5d1c9a0e", "read-key-77b2f3aa"


@pytest.fixture
def router_server(monkeypatch):
    """A RouterServer (what `vdbctl cluster up --routers` starts) over a LocalCluster, without Ray."""
    made = []

    def start(cluster):
        monkeypatch.setattr(rayside, "controller_peer", lambda spec: cluster.cpeer)
        made.append(RouterServer(cluster.spec.to_dict(), 0, timeout_s=5.0))
        return made[-1].address().split(":")[1]
    yield start
    for r in made:
        r.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_a_tls_cluster_is_served_over_tls_end_to_end(tmp_path, router_server):
    """Regression: the router served plaintext in front of TLS replicas (clients' keys in the clear), and
    dialled the replicas in plaintext, so every request through it was UNAVAILABLE."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    cluster = LocalCluster(tmp_path / "c", settings={"tls_cert": str(cert), "tls_key": str(key), "api_key": KEY})
    try:
        cluster.wait_in_sync()
        port = router_server(cluster)
        # a generous deadline: this checks TLS end to end, not latency (with 10 s the first search exceeded it in
        # three fresh-clone full-suite runs in a row on a 2-core machine; alone it passes in 5 s)
        with vdb.Client(f"localhost:{port}", KEY, root_certificates=cert.read_bytes(), timeout=120) as c:
            c.create_collection("c", dim=4)
            c.upsert("c", [1, 2], np.eye(2, 4, dtype=np.float32))
            assert c.search("c", np.eye(1, 4, dtype=np.float32)[0], top_k=1).ids.tolist() == [1]
        with vdb.Client(f"localhost:{port}", KEY, timeout=3, retries=0) as plain:
            with pytest.raises(vdb.UnavailableError):  # a plaintext client gets no answer from the router
                plain.list_collections()
    finally:
        cluster.close()


def test_keys_hold_through_the_router_and_stay_out_of_files_and_logs(tmp_path, router_server, caplog):
    caplog.set_level(logging.DEBUG)
    cluster = LocalCluster(tmp_path / "c", settings={"api_key": KEY, "read_only_api_key": READER})
    try:
        cluster.wait_in_sync()
        port = router_server(cluster)
        target = f"127.0.0.1:{port}"
        with vdb.Client(target, KEY) as admin:
            admin.create_collection("c", dim=4)
            admin.upsert("c", [1, 2], np.ones((2, 4), np.float32), [{"a": 1}, {"a": 2}])
        for key in (None, "wrong"):
            with vdb.Client(target, key, retries=0) as c, pytest.raises(vdb.UnauthenticatedError):
                c.count("c")
        with vdb.Client(target, READER) as reader:  # was UNAUTHENTICATED under `vdbctl cluster route`
            assert reader.count("c") == 2
            with pytest.raises(vdb.PermissionDeniedError):
                reader.upsert("c", [3], np.ones((1, 4), np.float32))
        for r in range(cluster.spec.replicas):  # and nobody goes around the router without a key
            with vdb.Client(cluster.replica(0, r).address, retries=0) as c, pytest.raises(vdb.UnauthenticatedError):
                c.count("c")
        write_snapshot(cluster.replica(0, cluster.primary_of(0)).db, "c", tmp_path / "snap.tar")
        holding = [p for p in tmp_path.rglob("*") if p.is_file() and
                   any(k.encode() in p.read_bytes() for k in (KEY, READER))]
        assert holding == []
        assert KEY not in caplog.text and READER not in caplog.text
    finally:
        cluster.close()


def test_vdbctl_cluster_route_serves_with_the_replicas_keys_and_tls(monkeypatch):
    """Regression: `vdbctl cluster route` passed only api_key on, so the read-only key was refused and a TLS
    cluster's extra router served plaintext. (Ray is replaced by the spec it would find.)"""
    from click.testing import CliRunner

    from vdb.cluster import commands, deploy, routing
    from vdb.cluster.spec import ClusterSpec
    from vdb.service import server
    spec = ClusterSpec(data_root="/nonexistent", settings={"api_key": KEY, "read_only_api_key": READER,
                                                           "tls_cert": "/certs/c.pem", "tls_key": "/certs/k.pem"})
    served = {}
    monkeypatch.setattr(commands, "_join", lambda address: None)
    monkeypatch.setattr(deploy, "find", lambda name: spec)
    monkeypatch.setattr(rayside, "controller_peer", lambda spec: None)
    monkeypatch.setattr(routing, "make_router", lambda controller, spec: "router")
    monkeypatch.setattr(server, "serve", lambda db, settings, **kw: served.update(settings))
    out = CliRunner().invoke(commands.route_command, ["--address", "x:1", "--port", "0"])
    assert out.exit_code == 0, out.output
    assert (served["api_key"], served["read_only_api_key"]) == (KEY, READER)
    assert (served["tls_cert"], served["tls_key"]) == ("/certs/c.pem", "/certs/k.pem")
