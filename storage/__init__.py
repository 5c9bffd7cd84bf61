"""Bytes, files and durability. Knows nothing about vector search or gRPC."""
from storage.errors import (CorruptionError, FormatError, LockedError, MetaStoreError, StorageError,
                            TruncatedError)
from storage.indexdir import IndexDir

__all__ = ["CorruptionError", "FormatError", "IndexDir", "LockedError", "MetaStoreError", "StorageError",
           "TruncatedError"]
