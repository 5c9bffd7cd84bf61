"""numba kernels, all compiled with nogil=True so that searches on several threads use several cores.

    search.py    posting scans (INT8, straight from the mmap), exact re-ranking with row checksums
    build.py     RNG-rule closure assignment, posting cap, balanced k-means pieces
    postings.py  passes over whole posting files (live counts, reachability)
    exact.py     small exact top-k, candidate merging, the cache's nearest key
"""
from index.kernels.build import (balanced_assign, cap_postings, cluster_means, kmeans_pp_init, neighbourhood_candidates,
                                 rng_select, sq_dists)
from index.kernels.exact import merge_candidates, merge_topk, nearest_key, small_exact_topk
from index.kernels.postings import live_counts, mark_reachable
from index.kernels.search import exact_at, exact_rows, rerank_cut, scan_ip, scan_l2, search_many, search_one

__all__ = ["balanced_assign", "cap_postings", "cluster_means", "exact_at", "exact_rows", "kmeans_pp_init", "live_counts",
           "mark_reachable", "merge_candidates", "neighbourhood_candidates", "rerank_cut", "merge_topk", "nearest_key", "rng_select", "scan_ip", "scan_l2", "search_many",
           "search_one", "small_exact_topk", "sq_dists"]
