"""The typed errors of vdb's public API, and the one table that maps every lower-layer error onto them.

Each error carries the gRPC status code it travels as (`.code`), in-process and over the wire alike.
"""
from __future__ import annotations

import grpc

from index.errors import InvalidParameterError, InvalidVectorsError
from storage.errors import (CorruptionError, DiskFullError, FormatError, InUseError, LockedError, MetaStoreError,
                            StorageError, TruncatedError, is_disk_full)
from storage.lmdbenv import LMDB_DAMAGE


class VdbError(Exception):
    """Base of every error vdb raises; `.code` is the gRPC status it travels as, `.message` the reason."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str = ""):
        self.message = message
        super().__init__(message)


class InvalidArgumentError(VdbError, ValueError):
    """Bad input: shape, dimension, NaN/Inf, ids, payloads, knobs, names."""
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(VdbError, KeyError):
    """No such collection (unknown ids are not errors: get leaves them out, delete ignores them)."""
    code = grpc.StatusCode.NOT_FOUND

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return self.message


class AlreadyExistsError(VdbError):
    """A collection of that name exists already."""
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhaustedError(VdbError):
    """Over a limit (batch size, message size, top_k, memory, disk space, indexing backlog)."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(VdbError):
    """The data on disk is of a format or version this vdb does not read."""
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnavailableError(VdbError):
    """Temporarily unable to serve (closed, recovering, another process holds the directory, a shard is down)."""
    code = grpc.StatusCode.UNAVAILABLE


class DataLossError(VdbError):
    """Stored bytes failed their checksum or layout; the message names the file and offset."""
    code = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(VdbError):
    """Missing or wrong API key."""
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(VdbError):
    """The key may not call this method (the read-only key writing)."""
    code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceededError(VdbError):
    """The caller's deadline passed first."""
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(VdbError):
    """A bug: logged by the server with its traceback; the request fails, the server stays up."""
    code = grpc.StatusCode.INTERNAL


# Lower-layer error type -> public error type. First match wins, so subclasses come before their bases.
TRANSLATION: tuple[tuple[type[BaseException] | tuple, type[VdbError]], ...] = (
    (InvalidVectorsError, InvalidArgumentError),
    (InvalidParameterError, InvalidArgumentError),
    (TruncatedError, DataLossError),
    (LMDB_DAMAGE, DataLossError),
    (CorruptionError, DataLossError),
    (FormatError, FailedPreconditionError),
    (LockedError, UnavailableError),
    (InUseError, FailedPreconditionError),
    (DiskFullError, ResourceExhaustedError),
    (MetaStoreError, ResourceExhaustedError),
    (StorageError, InternalError),
)

BY_CODE: dict[grpc.StatusCode, type[VdbError]] = {
    cls.code: cls for cls in (InvalidArgumentError, NotFoundError, AlreadyExistsError, ResourceExhaustedError,
                              FailedPreconditionError, UnavailableError, DataLossError, UnauthenticatedError,
                              PermissionDeniedError, DeadlineExceededError, InternalError)
}


def translate(exc: BaseException) -> VdbError:
    """The public error for any exception (VdbErrors pass through unchanged)."""
    if isinstance(exc, VdbError):
        return exc
    for source, target in TRANSLATION:
        if isinstance(exc, source):
            err = target(str(exc))
            err.__cause__ = exc
            return err
    if is_disk_full(exc):  # an OSError from a write outside the reserved paths: the disk, not a bug
        err = ResourceExhaustedError(f"the disk is full ({exc}); free space and retry")
        err.__cause__ = exc
        return err
    err = InternalError(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
