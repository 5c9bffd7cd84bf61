"""Calls between the actors of a cluster, through one small port so that the protocol code does not know Ray.

`Peer.call(method, *args, timeout=...)` runs a method of another member and returns its result. Two failures
matter to the protocol and are told apart: `PeerGone` (the process is gone: the call can never succeed on
this incarnation) and `PeerUnreachable` (no answer in time: it may be alive and serving). `gone()` asks the
authority (Ray's actor table) whether the incarnation the caller knew has ended.

vdb/cluster/rayside.py implements it over Ray actor handles; `LocalPeer` over an object in this process
(tests drive the replication protocol with it, without Ray).
"""
from __future__ import annotations

from typing import Protocol


class PeerGone(Exception):
    """The member's process ended (crashed, killed, its node lost); a restarted one is a new incarnation."""


class PeerUnreachable(Exception):
    """The member did not answer in time; it may still be alive."""


class StaleTerm(Exception):
    """The callee knows a newer term than the caller's: the caller is no longer the primary it thinks it is
    (raised by replicas and the controller, travels back to the caller unchanged)."""


class Peer(Protocol):
    key: str

    def call(self, method: str, *args, timeout: float, **kwargs): ...
    def gone(self) -> bool | None: ...   # True: that incarnation ended; False: alive; None: cannot tell
    def know(self, status: dict) -> None: ...  # the incarnation that just answered (its status / report)


class LocalPeer:
    """A member in this process. `kill()` makes it behave like a dead process: every call raises PeerGone."""

    def __init__(self, obj, key: str):
        self.obj, self.key, self.dead = obj, key, False

    def call(self, method: str, *args, timeout: float, **kwargs):
        """Call `method` of the object (the timeout is the caller's business here)."""
        if self.dead:
            raise PeerGone(self.key)
        return getattr(self.obj, method)(*args, **kwargs)

    def gone(self) -> bool:
        """Whether kill() was called."""
        return self.dead

    def know(self, status: dict) -> None:
        """Nothing to remember in-process."""

    def kill(self) -> None:
        """From now on the member is a dead process."""
        self.dead = True

    def __repr__(self) -> str:
        return f"LocalPeer({self.key})"
