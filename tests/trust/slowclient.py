"""A client that asks and never reads: raw HTTP/2 (the h2 library) with a 1-byte flow-control window, so every
answer the server produces stays in the server's memory until the connection closes."""
from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.settings


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


class SlowReader:
    def __init__(self, host: str, port: int, *, window: int = 1, token: str | None = None):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.sock.sendall(self.conn.data_to_send())
        self.token = token

    def call(self, method: str, request: bytes) -> int:
        """Start one unary call (its whole request sent); never read the answer. Returns the stream id."""
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":path", f"/vdb.v1.VectorDB/{method}"),
                   (":authority", f"{self.host}:{self.port}"), ("content-type", "application/grpc"),
                   ("te", "trailers")]
        if self.token:
            headers.append(("authorization", f"Bearer {self.token}"))
        self.conn.send_headers(sid, headers)
        self.conn.send_data(sid, grpc_frame(request), end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        return sid

    def close(self) -> None:
        self.sock.close()
