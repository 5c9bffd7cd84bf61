"""API keys: `authorization: Bearer <key>` on every call but health checks, compared in constant time.

Two keys: the admin key may call everything; the read-only key only the methods in READ_METHODS. A call with no
key or a wrong one is UNAUTHENTICATED; a read-only key calling a write is PERMISSION_DENIED.
"""
from __future__ import annotations

import hmac

import grpc

SERVICE = "vdb.v1.VectorDB"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
READ_METHODS = frozenset({"ListCollections", "DescribeCollection", "Get", "Search", "BatchSearch", "Count",
                          "Stats", "HybridSearch"})


def bearer_token(metadata) -> bytes:
    """The token of an `authorization: Bearer <key>` metadata entry, or b""."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].encode()
    return b""


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, api_key: str, read_only_key: str = ""):
        self._key = api_key.encode()
        self._ro = read_only_key.encode()

    def intercept_service(self, continuation, details):
        method = details.method
        if (not self._key and not self._ro) or method.startswith(HEALTH_PREFIX):
            return continuation(details)
        token = bearer_token(details.invocation_metadata)
        name = method.rsplit("/", 1)[-1]
        full = bool(self._key) and hmac.compare_digest(token, self._key)
        read_only = bool(self._ro) and hmac.compare_digest(token, self._ro)
        if full or (read_only and method.startswith(f"/{SERVICE}/") and name in READ_METHODS):
            return continuation(details)
        if read_only:
            return _deny(continuation(details), grpc.StatusCode.PERMISSION_DENIED,
                         f"the read-only API key may not call {name}")
        return _deny(continuation(details), grpc.StatusCode.UNAUTHENTICATED,
                     "missing or wrong API key: send metadata `authorization: Bearer <key>`")


def _deny(handler, code, message):
    if handler is None:
        return None

    def abort(request, context):
        context.abort(code, message)

    def abort_stream(request_iterator, context):
        context.abort(code, message)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort_stream)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
