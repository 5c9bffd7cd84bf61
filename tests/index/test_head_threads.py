"""A single-query head search runs faiss on one OpenMP thread (a team for one query only spin-waits: p99 7.8 ms
instead of 0.25 with one of 2 cores busy, tools/benchkit/head_threads.py) and leaves the calling thread's own
OpenMP setting as it found it; a process-wide faiss_threads (set_search_threads) still decides when set."""
import threading

import faiss
import numpy as np

from index.centroids import HeadIndex, set_search_threads


def test_one_query_searches_on_one_thread_and_the_callers_setting_is_kept(monkeypatch):
    rng = np.random.default_rng(0)
    heads = rng.standard_normal((5000, 16)).astype(np.float32)
    index = HeadIndex.build(heads, angular=False, kind="hnsw")
    q = rng.standard_normal((3, 16)).astype(np.float32)
    seen = []
    search = index.index.search

    def recording(*args, **kwargs):  # the OpenMP team size faiss would start for this call
        seen.append(faiss.omp_get_max_threads())
        return search(*args, **kwargs)
    monkeypatch.setattr(index.index, "search", recording)

    def caller(out):
        faiss.omp_set_num_threads(2)  # an embedding application's own choice for its thread
        one = index.search(q[:1], 8, 32)
        many = index.search(q, 8, 32)
        out.append((one, many, faiss.omp_get_max_threads()))
    set_search_threads(None)
    out = []
    th = threading.Thread(target=caller, args=(out,))
    th.start()
    th.join()
    (one, many, after), = out
    assert seen == [1, 2] and after == 2  # one query: one thread; a batch: the caller's; then the caller's again
    assert np.array_equal(one[1][0], many[1][0])  # the same heads either way
    seen.clear()
    set_search_threads(2)  # a process-wide setting is applied as it was
    try:
        index.search(q[:1], 8, 32)
    finally:
        set_search_threads(None)
    assert seen == [2]
