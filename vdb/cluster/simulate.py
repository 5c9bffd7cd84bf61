"""A multi-node Ray cluster simulated on one host, for tests, benchmarks and trying failover on a laptop: one
raylet per "node" (ray.cluster_utils.Cluster), loopback only, with its own Ray temp directory (so no other
process's `ray.init()` finds and joins it) and small object stores. Remove a node with
`cluster.remove_node(node)`: its raylet and every process on it end, as when a machine is lost.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager

STORE_BYTES = 80 << 20  # object store per node (Ray's floor is ~75 MB; only control messages and chunks use it)


@contextmanager
def simulated_ray(nodes: int = 3, cpus: int = 2, head_cpus: int | None = None):
    """Connect this process to a new simulated cluster: a head (`head_cpus` CPUs, default `cpus`) and
    nodes - 1 workers of `cpus` logical CPUs each. Yields (cluster, worker nodes); shuts it all down after."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    tmp = tempfile.mkdtemp(prefix="vdbray-", dir="/tmp")  # short: Ray's socket paths live below it
    os.environ["RAY_TMPDIR"] = tmp
    # Loopback: with this, Ray takes 127.0.0.1 as every node's address. Its processes read the variable when
    # they start; this one read it when it imported ray, hence the constant (restored afterwards).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    enabled, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=cpus if head_cpus is None else head_cpus,
                                                                object_store_memory=STORE_BYTES,
                                                                include_dashboard=False))
    try:
        workers = [cluster.add_node(num_cpus=cpus, object_store_memory=STORE_BYTES) for _ in range(nodes - 1)]
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = enabled
        shutil.rmtree(tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
