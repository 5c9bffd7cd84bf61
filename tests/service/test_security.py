"""API keys (full and read-only), health open without a key, and TLS."""
from __future__ import annotations

import shutil
import subprocess

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import vdb
from running import Running


@pytest.fixture
def secured(tmp_path):
    r = Running(tmp_path / "sec", api_key="s3cret-key", read_only_api_key="reader")
    yield r
    r.stop()


def test_right_key_works(secured):
    with secured.client(api_key="s3cret-key") as c:
        c.create_collection("c", dim=4)
        c.upsert("c", [1], np.ones((1, 4)))
        assert c.count("c") == 1


@pytest.mark.parametrize("key", [None, "wrong", "s3cret-ke", "s3cret-key2"])
def test_missing_or_wrong_key_is_unauthenticated(secured, key):
    with secured.client(api_key=key) as c:
        with pytest.raises(vdb.UnauthenticatedError) as e:
            c.list_collections()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and "authorization: Bearer" in str(e.value)


def test_read_only_key_reads_but_cannot_write(secured):
    with secured.client(api_key="s3cret-key") as admin:
        admin.create_collection("c", dim=4)
        admin.upsert("c", [1], np.ones((1, 4)))
    with secured.client(api_key="reader") as c:
        assert c.count("c") == 1 and c.search("c", np.ones(4), top_k=1)[0][0] == 1
        for write in (lambda: c.upsert("c", [2], np.ones((1, 4))), lambda: c.delete("c", [1]),
                      lambda: c.drop_collection("c"), lambda: c.create_collection("d", dim=2)):
            with pytest.raises(vdb.PermissionDeniedError):
                write()
        assert c.count("c") == 1


def test_health_needs_no_key(secured):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(secured.target))
    assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_the_key(secured):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(secured.target))
    with pytest.raises(grpc.RpcError) as e:
        list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    r = Running(tmp_path / "tls", tls_cert=str(cert), tls_key=str(key))
    try:
        with vdb.Client(f"localhost:{r.port}", root_certificates=cert.read_bytes()) as c:
            c.create_collection("c", dim=4)
            assert c.list_collections() == ["c"]
        with vdb.Client(f"localhost:{r.port}", timeout=3, retries=0) as plain:  # plaintext to a TLS port fails
            with pytest.raises(vdb.UnavailableError):
                plain.list_collections()
    finally:
        r.stop()
