"""The framework floor for bench_service: a bare Python gRPC server whose one unary method returns a fixed
reply, with the same thread-pool server as `vdbctl serve` and no interceptors. Run as a subprocess:

    python tools/benchkit/grpc_echo.py REPLY_BYTES WORKERS    # prints {"serving": "127.0.0.1:PORT"} on stderr

`floor_p50(target, request, n)` times n round trips from this process with the same payload sizes as vdb's
Search, so bench_service can quote vdb's overhead above what any Python gRPC service pays.
"""
from __future__ import annotations

import json
import sys
import time
from concurrent import futures

import grpc
import numpy as np

METHOD = "/bench.Echo/Call"


def serve(reply_bytes: int, workers: int) -> None:
    reply = b"\x01" * reply_bytes
    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Call": grpc.unary_unary_rpc_method_handler(lambda req, ctx: reply,
                                                    request_deserializer=None, response_serializer=None)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"serving": f"127.0.0.1:{port}"}), file=sys.stderr, flush=True)
    server.wait_for_termination()


def floor_p50(target: str, request: bytes, n: int = 2000) -> float:
    """Median seconds per unary round trip of `request` (raw bytes) to the echo server."""
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(METHOD)
        for _ in range(200):
            call(request, timeout=60)
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            call(request, timeout=60)
            lat.append(time.perf_counter() - t)
    return float(np.median(lat))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
