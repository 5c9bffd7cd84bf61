"""The distributed bulk build on Ray (an optional extra: `pip install 'vdb[ray]'`); spec docs/distributed_build.md.

    staging.py    the staging directory: progress record, trained plan, partition files (what resume reads)
    partition.py  one partition's work: read, store, encode INT8, RNG-rule assignment (no Ray)
    merge.py      the driver's merge: posting cap across partitions, write and commit the index directory
    driver.py     build_index_ray: validation, training on the driver, the Ray actor pool, publish

Ray is imported lazily, only by driver.py, and only when partitions remain to be run.
Tests: tests/index/test_distributed_build.py.
"""
from index.distributed.driver import DEFAULT_PARTITION_ROWS, build_index_ray

__all__ = ["DEFAULT_PARTITION_ROWS", "build_index_ray"]
