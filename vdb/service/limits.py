"""What one client may hold of the server: answers waiting for a slow reader count against a byte budget.

gRPC serialises an answer and keeps it until the client's flow-control window lets it through. A client that
asks and never reads (or reads at a trickle) would otherwise make the server hold every such answer: 30 streams
that never read a 24 MB answer took a server from 0.46 to 2.1 GB. So every answer of more than SMALL_ANSWER
bytes takes its size from ResponseBudget (searches: an estimate from the request, before any work is done)
before it is handed to gRPC, and gives it back when the RPC ends
(delivered, cancelled or timed out: grpc's termination callback). When the budget is spent, a new large
answer waits at most WAIT_S for room and is otherwise RESOURCE_EXHAUSTED; small answers always go. Streams per
connection are bounded by grpc's max_concurrent_streams, idle connections closed (server.py).
"""
from __future__ import annotations

import threading
import time

from vdb.errors import ResourceExhaustedError

SMALL_ANSWER = 64 << 10  # bytes: answers this small are not counted (their number is bounded by the streams)
WAIT_S = 2.0             # how long a large answer waits for budget before it is refused


class ResponseBudget:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._charged = threading.local()  # what the running handler already took (see charge_answer)
        self._used = 0
        self._peak = 0
        self._refused = 0
        self._cond = threading.Condition()

    def charge_ahead(self, nbytes: int, context) -> None:
        """Before the work: take what the answer will take (an estimate from the request), so a call that cannot
        fit is refused before it computes anything."""
        self.charge(nbytes, context)
        self._charged.n = getattr(self._charged, "n", 0) + nbytes

    def charge_answer(self, nbytes: int, context) -> None:
        """After the work: take what the finished answer needs beyond what was charged ahead."""
        ahead, self._charged.n = getattr(self._charged, "n", 0), 0
        if nbytes > ahead:
            self.charge(nbytes - ahead, context)

    def charge(self, nbytes: int, context) -> None:
        """Take `nbytes` for this RPC's answer until the RPC ends; RESOURCE_EXHAUSTED if it cannot fit."""
        if nbytes <= SMALL_ANSWER:
            return
        if nbytes > self.max_bytes:
            raise ResourceExhaustedError(f"the answer is {nbytes} bytes, more than the server holds for answers "
                                         f"in flight ({self.max_bytes}); ask for fewer results per call")
        deadline = time.monotonic() + WAIT_S
        with self._cond:
            while self._used + nbytes > self.max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._refused += 1
                    raise ResourceExhaustedError(f"{self._used} bytes of answers already wait for slow clients "
                                                 f"(limit {self.max_bytes}); retry later")
                self._cond.wait(left)
            self._used += nbytes
            self._peak = max(self._peak, self._used)

        def release() -> None:
            with self._cond:
                self._used -= nbytes
                self._cond.notify_all()
        if not context.add_callback(release):  # the RPC already ended
            release()

    def stats(self) -> dict:
        with self._cond:
            return {"in_flight_bytes": self._used, "peak_bytes": self._peak, "refused": self._refused,
                    "max_bytes": self.max_bytes}


def search_answer_bytes(n_queries: int, top_k: int, packed: bool) -> int:
    """What a search answer of n_queries x top_k takes on the wire: 12 bytes a result packed (int64 id, float32
    distance), about 15 unpacked (varint id, float, per-message framing)."""
    return n_queries * top_k * (12 if packed else 15) + 256
