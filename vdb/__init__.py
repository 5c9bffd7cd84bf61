"""vdb: a disk-resident SPANN-style vector database.

    import vdb
    db = vdb.connect("data/")                       # embedded
    db.create_collection("docs", dim=384, metric="cosine")
    db.upsert("docs", ids, vectors, payloads=None)
    ids, dists = db.search("docs", queries, top_k=10)
"""
from vdb.api import Record, SearchResult, VectorDB
from vdb.config import tune_process
from vdb.engine import Database, connect
from vdb.service.client import Client
from vdb.errors import (AlreadyExistsError, DataLossError, DeadlineExceededError, FailedPreconditionError,
                        InternalError, InvalidArgumentError, NotFoundError, PermissionDeniedError,
                        ResourceExhaustedError, UnauthenticatedError, UnavailableError, VdbError)

__version__ = "0.1.0"
__all__ = ["AlreadyExistsError", "Client", "DataLossError", "Database", "DeadlineExceededError", "FailedPreconditionError",
           "InternalError", "InvalidArgumentError", "NotFoundError", "PermissionDeniedError", "Record",
           "ResourceExhaustedError", "SearchResult", "UnauthenticatedError", "UnavailableError", "VdbError",
           "VectorDB", "connect", "tune_process"]
