"""Full-text search beside the vectors: a BM25 index over one payload text field, and rank fusion.

    fusion.py   reciprocal rank fusion and weighted score fusion of ranked lists (pure numpy)
    fresh.py    the fresh tier: BM25 over rows applied since the last text commit, in RAM
    index.py    TextIndex: tantivy segments on disk + the fresh tier, committed in the background, recovered
                from what the checkpoint and the WAL hold
    verify.py   the CRCs of tantivy's files (tantivy never checks them): checked at open, by check and repair
    embed.py    HashingEmbedder: deterministic text -> vector, for tests and examples (no model download)

Nothing here knows the engine: vdb/engine/textsearch.py feeds a TextIndex from the write path and runs hybrid
queries through it. tantivy is imported only by index.py, so fusion and the embedder load without it.
"""
