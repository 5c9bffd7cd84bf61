"""The engine's side of full-text and hybrid search: a collection's TextIndex (vdb/text) fed, recovered and queried.

The collection calls this module at a few marked points (`# text index:` in collection.py): it opens the index
with the collection, recovers it before the WAL replay (`recover`), reports every apply (`TextIndex.applied`),
commits it at each checkpoint and closes it. Everything else about text lives here and in vdb/text.

Hybrid query (`hybrid_search`): the dense list is the collection's own search (filter, knobs and semantic cache
as for `search`), the text list is BM25 over the same filter and the rows' live state; each list is cut to
`candidates` entries (and those tied with the last one, up to TIE_SLACK more: which members of a tied group a
search returns first is arbitrary) and the two are fused (vdb/text/fusion.py: RRF or weighted). Text alone
answers with BM25 scores, a vector alone is a plain vector search. Answers carry "distances" that are smaller-is-better like every
search of vdb: the vector distance for a vector alone, -BM25 for text alone, -fused score for both.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from index.distance import as_matrix
from index.rowstate import is_live
from vdb.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError
from vdb.query.filters import compile_filter
from vdb.text import fusion
from vdb.text.options import TIE_SLACK, check_options, query_texts

RECOVERY_CHUNK = 4096


class NoTextIndex:
    """What a collection without a `text_field` has instead of a TextIndex: the hooks do nothing, and text
    queries fail with a precise error (text_rows)."""
    enabled = False

    def applied(self, rows, payloads, dead_rows, n_rows: int) -> None:
        """Nothing to index."""

    def checkpoint(self) -> None:
        """Nothing to commit."""

    def close(self, *, commit: bool = True) -> None:
        """Nothing to release."""

    def stats(self) -> dict:
        """The collection's stats say there is no text index."""
        return {"enabled": False}

    def verify(self) -> list[str]:
        """Nothing to check."""
        return []


def open_text_index(path: Path, settings):
    """The collection's TextIndex, or a NoTextIndex when it has no `text_field`."""
    field = settings.get("text_field", "")
    if not field:
        return NoTextIndex()
    from vdb.text.index import TextIndex  # tantivy is loaded only by collections that have a text index
    return TextIndex(Path(path) / "text", field, commit_interval_s=settings["text_commit_interval_s"])


def recover(text, index) -> None:
    """Before the WAL replay: bring the text index to the rows the checkpoint covers (see vdb/text/index.py)."""
    if not text.enabled:
        return
    def live_payloads(start: int, n: int):
        for lo in range(start, n, RECOVERY_CHUNK):
            rows = np.arange(lo, min(n, lo + RECOVERY_CHUNK), dtype=np.int64)
            rows = rows[is_live(index.state[rows])]
            if len(rows):
                yield rows, index.committed_payloads(index.int2ext[rows])
    text.recover(index.n_rows, live_payloads, lambda: np.nonzero(~is_live(index.state))[0])
    text.start()


# -- check and repair ---------------------------------------------------------------------------------------
def check(c) -> list[str]:
    """`vdbctl check` of the text index: its committed files (while damaged, text searches fail with DATA_LOSS)."""
    return [f"text index: {p}" for p in c.text.verify()]


def repair(c) -> dict:
    """`vdbctl repair`: a damaged text index is rebuilt from the live rows' payloads, writes held off meanwhile."""
    if not c.text.verify():
        return {}
    with c.index.lock:  # the write path applies under this lock: no write falls between the rebuild's reads
        c.text.rebuild(c.idmap.live_payload_rows(), c.index.n_rows)
    return {"text_index_rebuilt": True}


def stored_notes(path: Path) -> list[str]:
    """`vdbctl check` of a stored collection: a damaged text index is derived data the next open rebuilds."""
    if not (Path(path) / "text" / "state.json").exists():
        return []
    from vdb.text.verify import damage
    return [f"text index damaged, the next open rebuilds it from the payloads: {p}"
            for p in damage(Path(path) / "text" / "tantivy")]


# -- queries ------------------------------------------------------------------------------------------------
def text_rows(c, texts: list[str], k: int, node):
    """BM25 top-k of each text among the live rows that pass the compiled filter `node`: external ids and
    scores [nq, k] (-1 / -inf padded)."""
    if not c.text.enabled:
        raise FailedPreconditionError(f"collection {c.name!r} has no full-text index; create it with "
                                      f"text_field=<payload field>")
    return c.unmoved(lambda: _text_rows(c, texts, k, node))  # a relocation moves rows in the text index too


def _text_rows(c, texts: list[str], k: int, node):
    state = c.row_state()
    restrict = None
    if node is not None:
        allow = c.filter_allow(node, state).astype(bool)
        matches = int(allow.sum())
        if matches <= c.settings["exact_filter_rows"]:
            restrict = np.nonzero(allow)[0]
    else:
        allow = is_live(state)
    rows, scores = c.text.search(texts, k, allow, restrict=restrict)
    ext = c.index.int2ext.of_answers(rows)  # -1 also for a row deleted meanwhile
    return ext, np.where(ext >= 0, scores, -np.inf)


def _check_sizes(c, texts: list[str]) -> None:
    """A query's cost grows with its length and its distinct terms (one posting list each): both are bounded
    (max_query_text_kb, max_query_terms), so no request can hold the server for seconds and gigabytes."""
    max_bytes, max_terms = c.settings["max_query_text_kb"] << 10, c.settings["max_query_terms"]
    for i, t in enumerate(texts):
        if len(t) > max_bytes or len(t.encode()) > max_bytes:  # len(t) first: no copy of a huge text
            raise ResourceExhaustedError(f"text {i}: {len(t.encode())} bytes, more than max_query_text_kb="
                                       f"{c.settings['max_query_text_kb']}")
        if c.text.enabled and len(terms := c.text.terms(t)) > max_terms:
            raise ResourceExhaustedError(f"text {i}: {len(terms)} distinct terms, more than max_query_terms="
                                       f"{max_terms}")


def hybrid_search(c, text, vectors, top_k: int, *, fusion_name: str, alpha: float, rrf_k: int, candidates,
                  filter, knobs: dict, use_cache: bool, explain):
    """(ids [nq, top_k], distances [nq, top_k]) for text, vectors or both; see the module docstring."""
    texts = query_texts(text)
    if texts is None and vectors is None:
        raise InvalidArgumentError("hybrid_search needs text, a vector, or both")
    if texts is not None and len(texts) > c.settings["max_batch"]:  # as search's limit on query vectors
        raise ResourceExhaustedError(f"{len(texts)} queries exceed max_batch={c.settings['max_batch']}")
    if texts is not None:
        _check_sizes(c, texts)
    depth = check_options(fusion_name, alpha, rrf_k, candidates, top_k, c.settings["max_top_k"])
    if vectors is None:
        node = compile_filter(filter) if filter is not None else None
        ids, scores = text_rows(c, texts, int(top_k), node)
        if explain is not None:
            explain.path = "text"
        return ids, (-scores).astype(np.float32)
    if texts is None:
        return c.search(vectors, top_k, filter=filter, use_cache=use_cache, explain=explain, **knobs)
    nq = len(as_matrix(vectors, c.dim, name="queries"))
    if len(texts) != nq:
        raise InvalidArgumentError(f"{len(texts)} texts but {nq} query vectors")
    node = compile_filter(filter) if filter is not None else None
    fetch = min(depth + TIE_SLACK, c.settings["max_top_k"])  # each list: `depth` and whatever ties its last entry
    t_ids, t_scores = fusion.cut_after_ties(*text_rows(c, texts, fetch, node), depth)
    d_ids, d_dist = c.search(vectors, fetch, filter=filter, use_cache=use_cache, explain=explain, **knobs)
    dense = fusion.cut_after_ties(d_ids, np.where(d_ids >= 0, -d_dist.astype(np.float64), -np.inf), depth)
    if fusion_name == "rrf":
        ids, fused = fusion.rrf([dense, (t_ids, t_scores)], int(top_k), int(rrf_k))
    else:
        ids, fused = fusion.weighted([dense, (t_ids, t_scores)], [float(alpha), 1.0 - float(alpha)], int(top_k))
    if explain is not None:
        explain.path = f"hybrid-{fusion_name}"
    return ids, (-fused).astype(np.float32)
