from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_L2: _ClassVar[Metric]
    METRIC_IP: _ClassVar[Metric]
    METRIC_COSINE: _ClassVar[Metric]

class Durability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DURABILITY_UNSPECIFIED: _ClassVar[Durability]
    DURABILITY_FSYNC: _ClassVar[Durability]
    DURABILITY_BATCH: _ClassVar[Durability]
    DURABILITY_NONE: _ClassVar[Durability]

class Fusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_UNSPECIFIED: _ClassVar[Fusion]
    FUSION_RRF: _ClassVar[Fusion]
    FUSION_WEIGHTED: _ClassVar[Fusion]
METRIC_UNSPECIFIED: Metric
METRIC_L2: Metric
METRIC_IP: Metric
METRIC_COSINE: Metric
DURABILITY_UNSPECIFIED: Durability
DURABILITY_FSYNC: Durability
DURABILITY_BATCH: Durability
DURABILITY_NONE: Durability
FUSION_UNSPECIFIED: Fusion
FUSION_RRF: Fusion
FUSION_WEIGHTED: Fusion

class Vectors(_message.Message):
    __slots__ = ("dim", "data")
    DIM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dim: int
    data: bytes
    def __init__(self, dim: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "dim", "metric", "count", "durability", "build_params_json", "heads")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    BUILD_PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    count: int
    durability: Durability
    build_params_json: str
    heads: int
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., count: _Optional[int] = ..., durability: _Optional[_Union[Durability, str]] = ..., build_params_json: _Optional[str] = ..., heads: _Optional[int] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "dim", "metric", "durability", "exist_ok", "options_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    EXIST_OK_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    durability: Durability
    exist_ok: bool
    options_json: str
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., durability: _Optional[_Union[Durability, str]] = ..., exist_ok: _Optional[bool] = ..., options_json: _Optional[str] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionInfo
    def __init__(self, collection: _Optional[_Union[CollectionInfo, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DescribeCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionInfo
    def __init__(self, collection: _Optional[_Union[CollectionInfo, _Mapping]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "ids", "vectors", "payloads_json")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_JSON_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: Vectors
    payloads_json: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[_Union[Vectors, _Mapping]] = ..., payloads_json: _Optional[_Iterable[bytes]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("lsn", "upserted")
    LSN_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    upserted: int
    def __init__(self, lsn: _Optional[int] = ..., upserted: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("lsn",)
    LSN_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    def __init__(self, lsn: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids", "omit_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    OMIT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    omit_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., omit_vectors: _Optional[bool] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("ids", "vectors", "payloads_json")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_JSON_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: Vectors
    payloads_json: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[_Union[Vectors, _Mapping]] = ..., payloads_json: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SearchParams(_message.Message):
    __slots__ = ("top_k", "nprobe", "rerank_k", "eps", "filter_json", "use_cache", "explain", "allow_partial")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    RERANK_K_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    USE_CACHE_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    nprobe: int
    rerank_k: int
    eps: float
    filter_json: str
    use_cache: bool
    explain: bool
    allow_partial: bool
    def __init__(self, top_k: _Optional[int] = ..., nprobe: _Optional[int] = ..., rerank_k: _Optional[int] = ..., eps: _Optional[float] = ..., filter_json: _Optional[str] = ..., use_cache: _Optional[bool] = ..., explain: _Optional[bool] = ..., allow_partial: _Optional[bool] = ...) -> None: ...

class Explain(_message.Message):
    __slots__ = ("path", "postings_probed", "records_scanned", "bytes_read", "memtable_rows", "filter_matches", "cache")
    PATH_FIELD_NUMBER: _ClassVar[int]
    POSTINGS_PROBED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    MEMTABLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    FILTER_MATCHES_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    path: str
    postings_probed: int
    records_scanned: int
    bytes_read: int
    memtable_rows: int
    filter_matches: int
    cache: str
    def __init__(self, path: _Optional[str] = ..., postings_probed: _Optional[int] = ..., records_scanned: _Optional[int] = ..., bytes_read: _Optional[int] = ..., memtable_rows: _Optional[int] = ..., filter_matches: _Optional[int] = ..., cache: _Optional[str] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("ids", "distances", "explain", "partial", "missing_shards")
    IDS_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    distances: _containers.RepeatedScalarFieldContainer[float]
    explain: Explain
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., distances: _Optional[_Iterable[float]] = ..., explain: _Optional[_Union[Explain, _Mapping]] = ..., partial: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "params")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: Vectors
    params: SearchParams
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[_Union[Vectors, _Mapping]] = ..., params: _Optional[_Union[SearchParams, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: SearchResult
    def __init__(self, result: _Optional[_Union[SearchResult, _Mapping]] = ...) -> None: ...

class BatchSearchRequest(_message.Message):
    __slots__ = ("collection", "queries", "params", "packed")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: Vectors
    params: SearchParams
    packed: bool
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Union[Vectors, _Mapping]] = ..., params: _Optional[_Union[SearchParams, _Mapping]] = ..., packed: _Optional[bool] = ...) -> None: ...

class PackedResults(_message.Message):
    __slots__ = ("top_k", "ids", "distances", "explain", "partial", "missing_shards")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    ids: bytes
    distances: bytes
    explain: Explain
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, top_k: _Optional[int] = ..., ids: _Optional[bytes] = ..., distances: _Optional[bytes] = ..., explain: _Optional[_Union[Explain, _Mapping]] = ..., partial: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchSearchResponse(_message.Message):
    __slots__ = ("results", "packed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    packed: PackedResults
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., packed: _Optional[_Union[PackedResults, _Mapping]] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class FlushResponse(_message.Message):
    __slots__ = ("checkpoint_lsn",)
    CHECKPOINT_LSN_FIELD_NUMBER: _ClassVar[int]
    checkpoint_lsn: int
    def __init__(self, checkpoint_lsn: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("stats_json",)
    STATS_JSON_FIELD_NUMBER: _ClassVar[int]
    stats_json: str
    def __init__(self, stats_json: _Optional[str] = ...) -> None: ...

class HybridSearchRequest(_message.Message):
    __slots__ = ("collection", "texts", "queries", "params", "fusion", "alpha", "rrf_k", "candidates")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    collection: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    queries: Vectors
    params: SearchParams
    fusion: Fusion
    alpha: float
    rrf_k: int
    candidates: int
    def __init__(self, collection: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., queries: _Optional[_Union[Vectors, _Mapping]] = ..., params: _Optional[_Union[SearchParams, _Mapping]] = ..., fusion: _Optional[_Union[Fusion, str]] = ..., alpha: _Optional[float] = ..., rrf_k: _Optional[int] = ..., candidates: _Optional[int] = ...) -> None: ...

class HybridSearchResponse(_message.Message):
    __slots__ = ("packed",)
    PACKED_FIELD_NUMBER: _ClassVar[int]
    packed: PackedResults
    def __init__(self, packed: _Optional[_Union[PackedResults, _Mapping]] = ...) -> None: ...
