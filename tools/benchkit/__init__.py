"""Helpers of tools/bench_index.py: datasets and ground truth, timing and process counters, one module per system
family (vdb, in-memory faiss, out-of-process peers), the INT8 study, and the report renderer. Never imported by
the library and never collected by pytest."""
