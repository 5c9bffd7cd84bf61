"""The gRPC service (the only part of vdb that imports grpc, besides the generated stubs in vdb/v1/).

    server.py   create_server / serve: `vdb.v1.VectorDB` over any VectorDB (a Database or a Router)
    auth.py     API keys (admin and read-only), constant-time compare
    convert.py  protobuf <-> domain types: the one translation boundary
    client.py   vdb.Client: the VectorDB interface over gRPC
    router.py   Router: one VectorDB over several shard servers (id-hash sharding, scatter-gather)
    metrics.py  Prometheus request metrics and per-collection gauges
"""
