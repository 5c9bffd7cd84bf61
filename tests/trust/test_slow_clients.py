"""Hostile and slow clients (issue 11.8): clients that ask and never read cannot make the server hold more than
its answer budget, the limit on streams per connection is what the server says it is, and idle connections or
garbage bytes on the port do not stop anyone else from being served."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from running import Running
from slowclient import SlowReader
from vdb.service import convert
from vdb.v1 import vector_db_pb2 as pb

BUDGET_MB = 16


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


@pytest.fixture
def big_answers(tmp_path):
    r = Running(tmp_path / "data", max_inflight_answers_mb=BUDGET_MB, max_streams_per_connection=8,
                checkpoint_interval_s=3600)
    with r.client() as c:
        c.create_collection("c", dim=8, bootstrap_rows=10**6)  # searched exactly from the memtable: cheap
        c.upsert("c", np.arange(5000), np.random.default_rng(0).normal(size=(5000, 8)).astype(np.float32))
    q = np.random.default_rng(1).normal(size=(100, 8)).astype(np.float32)
    request = pb.BatchSearchRequest(collection="c", queries=convert.to_vectors(q), packed=True,
                                    params=convert.search_params(5000, use_cache=False)).SerializeToString()
    yield r, request  # each answer: 100 x 5000 results, about 6 MB
    r.stop()


def test_readers_that_never_read_cannot_exhaust_the_server(big_answers):
    server, request = big_answers
    budget = server.server.budget
    before = _rss_mb()
    readers = []
    try:
        for _ in range(12):  # 12 connections x 2 calls of 6 MB answers: 144 MB if the server held them all
            r = SlowReader("127.0.0.1", server.port)
            r.call("BatchSearch", request)
            r.call("BatchSearch", request)
            readers.append(r)
        for _ in range(600):  # until every call was answered or refused (the server's own counters)
            s = budget.stats()
            if s["refused"] and s["in_flight_bytes"] >= (BUDGET_MB << 20) * 0.6:
                break
            time.sleep(0.05)
        s = budget.stats()
        assert s["peak_bytes"] <= BUDGET_MB << 20 and s["refused"] > 0
        with server.client(retries=0) as c:  # everyone else is still served, searches included
            assert c.count("c") == 5000
            assert len(c.search("c", np.zeros(8, np.float32), top_k=3).ids) == 3
        assert _rss_mb() - before < 4 * BUDGET_MB + 120  # measured ~2.5x the budget: gRPC's copies and frames
    finally:
        for r in readers:
            r.close()
    for _ in range(600):  # closing the connections ends the calls and gives the budget back
        if budget.stats()["in_flight_bytes"] == 0:
            break
        time.sleep(0.05)
    assert budget.stats()["in_flight_bytes"] == 0


def test_the_server_announces_its_stream_limit(big_answers):
    server, _ = big_answers
    r = SlowReader("127.0.0.1", server.port)
    try:
        r.sock.settimeout(10)
        for _ in range(50):
            for event in r.conn.receive_data(r.sock.recv(65536)):
                if type(event).__name__ == "RemoteSettingsChanged":
                    assert r.conn.remote_settings.max_concurrent_streams == 8
                    return
        pytest.fail("the server never sent its settings")
    finally:
        r.close()


def test_idle_connections_and_garbage_do_not_block_others(big_answers):
    server, _ = big_answers
    socks = []
    try:
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" if i % 2 else b"\x00\xff garbage \x13\x37" * 50)
            socks.append(s)
        with server.client(retries=0) as c:
            assert c.count("c") == 5000
    finally:
        for s in socks:
            s.close()
    with server.client(retries=0) as c:
        assert c.count("c") == 5000
