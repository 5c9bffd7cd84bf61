"""TextIndex: BM25 full-text search over one payload field of a collection, kept as the vectors are kept.

Layout: `<collection>/text/tantivy/` is a tantivy index (fields: `row` u64 indexed + fast, `len` u64 fast, `text`
analysed by "vdb_en" = simple tokenizer, tokens over 40 bytes dropped, lowercase, English Snowball stemmer;
term frequencies, no positions); `<collection>/text/state.json` = {"version", "field", "watermark", "clean"}.

Why tantivy: it is an incremental, segment-based inverted index (Lucene's design, in Rust, maintained by the
Quickwit team) with deletes, atomic commits and BM25, behind official Python bindings that release the GIL while
they work. bm25s precomputes every (document, term) score into one sparse matrix whose values bake in the corpus
statistics, so each upsert or delete would mean rebuilding it; rank-bm25 is unmaintained and scans every document
per query.

Life of a text: `applied()` (the write path, in LSN order) puts a new row's text into the fresh tier (fresh.py),
searchable at once. A committer thread, every `commit_interval_s` (sooner when `commit_rows` wait), adds the
pending rows to tantivy, deletes the rows that died, commits, reloads, and only then drops the rows from the
fresh tier, under the lock, so a query sees every row in exactly one tier. A delete or a replacement is
invisible at once because every query is masked by the rows' live state (the caller's `allow` mask).

Crash safety: the text index is derived from what the checkpoint and the WAL hold. The state file, written
after each tantivy commit, names a watermark W: every live row below W was in that commit. `recover()` (called
before the WAL replay, with the number of rows the checkpoint covers, n) takes W' = min(W, n), deletes every
document at or above W' (they may come from writes whose WAL record never became durable), and re-adds the live
rows in [W', n) from the checkpointed payloads; the replay feeds the rest through `applied()`. A missing,
damaged (a file failing its footer CRC: verify.py, checked at every open) or foreign index starts over with
W' = 0; damage found while open makes text searches DataLossError until `repair` rebuilds the index from the
live payloads (`rebuild`). After an unclean stop, documents of rows that died after the
last commit are deleted as well, so that they stop counting in the BM25 statistics.
"""
from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import tantivy

from storage.crashpoints import crashpoint
from storage.fileio import atomic_write_bytes
from vdb.errors import DataLossError, VdbError
from vdb.query.filters import lookup
from vdb.text.fresh import FreshTier
from vdb.text.verify import damage

log = logging.getLogger(__name__)
STATE_VERSION = 1
ANALYZER = "vdb_en"
MAX_TOKEN_BYTES = 40
WRITER_HEAP_BYTES = 15_000_000       # tantivy's smallest indexing arena (one thread)
ROW_MAX = (1 << 63) - 1


def make_analyzer() -> tantivy.TextAnalyzer:
    """The analyser of indexed texts and of queries (the same, or BM25 would compare different terms)."""
    return (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES)).filter(tantivy.Filter.lowercase())
            .filter(tantivy.Filter.stemmer("english")).build())


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_unsigned_field("row", indexed=True, fast=True)
    sb.add_unsigned_field("len", fast=True)
    sb.add_text_field("text", tokenizer_name=ANALYZER, index_option="freq")
    return sb.build()


class TextIndex:
    """The full-text index of one collection over payload field `field` (a dotted path)."""
    enabled = True

    def __init__(self, path: str | Path, field: str, *, commit_interval_s: float = 1.0, commit_rows: int = 20_000):
        self.path, self.field = Path(path), field
        self.commit_interval_s, self.commit_rows = float(commit_interval_s), int(commit_rows)
        self.analyzer = make_analyzer()
        self.fresh = FreshTier()
        self._lock = threading.Condition()      # fresh tier, searcher, pending deletes, counters
        self._commit_lock = threading.Lock()    # the tantivy writer: one commit at a time
        self._deletes: list[int] = []
        self._upto = 0                          # rows the write path has applied (the collection's n_rows)
        self._closed, self._thread = False, None
        self.commits, self.failed_commits = 0, 0
        state = self._read_state()
        self._watermark = int(state.get("watermark", 0))
        self._clean = bool(state.get("clean", False))
        self._schema = _schema()
        self._open_tantivy(reset=not state)
        self._write_state(clean=False)

    # -- opening and recovery ---------------------------------------------------------------------------
    def _read_state(self) -> dict:
        try:
            state = json.loads((self.path / "state.json").read_bytes())
        except (OSError, ValueError):
            return {}
        ok = isinstance(state, dict) and state.get("version") == STATE_VERSION and state.get("field") == self.field
        return state if ok else {}

    def _open_tantivy(self, *, reset: bool) -> None:
        where = self.path / "tantivy"
        if reset and where.exists():
            shutil.rmtree(where)
        problems = [] if reset else damage(where)  # tantivy itself checks no CRC, and a missing meta.json
        if problems:                               # would just make it start an empty index
            log.warning("text index %s is damaged (%s); rebuilding it from the payloads", where, problems[0])
            shutil.rmtree(where, ignore_errors=True)
            self._watermark, self._clean = 0, False
        where.mkdir(parents=True, exist_ok=True)
        try:
            self._index = tantivy.Index(self._schema, path=str(where), reuse=True)
        except Exception as e:  # damaged or foreign: it is derived data, so start over
            log.warning("text index %s cannot be opened (%s); rebuilding it", where, e)
            shutil.rmtree(where)
            where.mkdir()
            self._index = tantivy.Index(self._schema, path=str(where), reuse=True)
            self._watermark, self._clean = 0, False
        self._index.register_tokenizer(ANALYZER, self.analyzer)
        self._index.config_reader("manual")
        self._writer = self._index.writer(WRITER_HEAP_BYTES, 1)
        self._reload()

    def recover(self, n_rows: int, live_payloads, dead_rows) -> None:
        """Before the WAL replay: make the index hold exactly the live rows below `n_rows` (the rows the checkpoint
        covers). `live_payloads(start, n_rows)` yields (rows, payloads) of the live rows in [start, n_rows);
        `dead_rows()` gives every dead row (asked only after an unclean stop)."""
        start = min(self._watermark, int(n_rows))
        stale = tantivy.Query.range_query(self._schema, "row", tantivy.FieldType.Unsigned, start, ROW_MAX)
        dirty = self._searcher.search(stale, 1, count=True).count > 0
        if dirty:
            self._writer.delete_documents_by_query(stale)
        if not self._clean:
            dead = np.asarray(dead_rows(), np.int64)
            dead = dead[dead < start].tolist()
            if dead:
                self._delete_rows(dead)
            dirty = dirty or bool(dead)
        if dirty:
            self._writer.commit()
            self._reload()
        self._watermark = self._upto = start
        self._write_state(clean=False)
        for rows, payloads in live_payloads(start, int(n_rows)):
            self.applied(rows, payloads, (), int(n_rows))

    def start(self) -> None:
        """Start the committer thread (after recovery)."""
        self._thread = threading.Thread(target=self._run, name=f"vdb-text-{self.path.parent.name}", daemon=True)
        self._thread.start()

    # -- the write path ---------------------------------------------------------------------------------
    def applied(self, rows, payloads, dead_rows, n_rows: int) -> None:
        """New rows with their payloads (in row order) and rows that died (deleted or replaced), as applied."""
        new = []
        for r, p in zip(np.asarray(rows).tolist() if rows is not None else (), payloads or ()):
            text = lookup(p, self.field) if isinstance(p, dict) else None
            if isinstance(text, str):
                new.append((r, self.analyzer.analyze(text), text))
        with self._lock:
            for r in np.asarray(dead_rows, np.int64).tolist():
                only_fresh = r in self.fresh.docs and r not in self.fresh.in_flight
                self.fresh.remove(r)
                if not only_fresh:
                    self._deletes.append(r)
            for r, terms, text in new:
                self.fresh.add(r, terms, text)
            self._upto = max(self._upto, int(n_rows))
            if self.fresh.pending() >= self.commit_rows:
                self._lock.notify_all()

    def commit(self) -> bool:
        """Move the fresh tier into tantivy's segments (durable when this returns). False if nothing to do."""
        with self._commit_lock:
            with self._lock:
                batch = self.fresh.take_pending()
                deletes, self._deletes = self._deletes, []
                upto = self._upto
            if not batch and not deletes and upto == self._watermark:
                return False
            try:
                if deletes:
                    self._delete_rows(deletes)
                for r, text, length in batch:
                    doc = tantivy.Document()
                    doc.add_unsigned("row", r)
                    doc.add_unsigned("len", length)
                    doc.add_text("text", text)
                    self._writer.add_document(doc)
                self._writer.commit()
                crashpoint("text-commit")  # tantivy holds the rows, the state file does not say so yet
                searcher, tokens = self._open_searcher()
                self._write_state(clean=False, watermark=upto)
            except BaseException:
                self.failed_commits += 1
                self._writer.rollback()
                with self._lock:
                    self.fresh.give_back([r for r, _, _ in batch])
                    self._deletes = deletes + self._deletes
                raise
            with self._lock:
                self._searcher, self._tokens = searcher, tokens
                for r, _, _ in batch:
                    if r in self.fresh.in_flight:
                        self.fresh.remove(r)
                self._watermark = upto
                self.commits += 1
            return True

    def _delete_rows(self, rows: list[int]) -> None:
        # By query: delete_documents_by_term makes an i64 term from a Python int, which never matches a u64 field
        self._writer.delete_documents_by_query(tantivy.Query.term_set_query(self._schema, "row", rows))

    def checkpoint(self) -> None:
        """Commit as part of a collection checkpoint. A failure is logged, not raised: the text index is derived
        data (recover() rebuilds what a commit did not store), so it must never block the vectors' checkpoint."""
        try:
            self.commit()
        except Exception:
            log.exception("text index %s: commit at checkpoint failed", self.path)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._closed and self.fresh.pending() < self.commit_rows:
                    self._lock.wait(self.commit_interval_s)
                if self._closed:
                    return
                due = self.fresh.pending() > 0 or bool(self._deletes) or self._upto != self._watermark
            if due:
                try:
                    self.commit()
                except Exception:
                    log.exception("text index %s: commit failed; the rows stay in the fresh tier", self.path)

    def _reload(self) -> None:
        self._searcher, self._tokens = self._open_searcher()

    def _open_searcher(self):
        self._index.reload()
        searcher = self._index.searcher()
        total = searcher.aggregate(tantivy.Query.all_query(), {"t": {"sum": {"field": "len"}}})["t"]["value"]
        return searcher, int(total or 0)

    def _write_state(self, *, clean: bool, watermark: int | None = None) -> None:
        state = {"version": STATE_VERSION, "field": self.field, "clean": clean,
                 "watermark": int(self._watermark if watermark is None else watermark)}
        atomic_write_bytes(self.path / "state.json", json.dumps(state).encode())

    # -- queries ----------------------------------------------------------------------------------------
    def terms(self, text: str) -> list[str]:
        """The distinct analysed terms of a query, sorted."""
        return sorted(set(self.analyzer.analyze(text)))

    def search(self, texts: list[str], k: int, allow: np.ndarray, *, restrict: np.ndarray | None = None):
        """BM25 top-k of each text among the rows where `allow` (bool [n_rows]) is true: (rows int64 [nq, k],
        scores float32 [nq, k]), best first, padded with -1 / -inf. `restrict` (the allowed rows, when there
        are few) makes tantivy itself skip every other row instead of filtering its answers."""
        rows = np.full((len(texts), k), -1, np.int64)
        scores = np.full((len(texts), k), -np.inf, np.float32)
        for qi, text in enumerate(texts):
            try:
                hits = self._search_one(self.terms(text), k, allow, restrict)
            except (KeyboardInterrupt, SystemExit, VdbError):
                raise
            except BaseException as e:  # pyo3's PanicException is a BaseException: tantivy panics on damaged bytes
                raise DataLossError(f"text index {self.path}: a search failed ({type(e).__name__}: {e}); its files "
                                    f"are damaged: `vdbctl repair` (or reopening) rebuilds it from the payloads") from e
            for j, (s, r) in enumerate(hits):
                rows[qi, j], scores[qi, j] = r, s
        return rows, scores

    def _search_one(self, terms: list[str], k: int, allow: np.ndarray, restrict) -> list[tuple[float, int]]:
        if not terms:
            return []
        with self._lock:
            searcher, tokens = self._searcher, self._tokens
            n_docs = searcher.num_docs + len(self.fresh)
            df = {t: searcher.doc_freq("text", t) + self.fresh.doc_freq(t) for t in terms}
            avg_len = max((tokens + self.fresh.tokens) / max(n_docs, 1), 1e-9)
            fresh = self.fresh.score(terms, df, n_docs, avg_len)
        n = len(allow)
        best = {r: s for r, s in fresh.items() if r < n and allow[r]}
        for s, r in self._committed(searcher, terms, k, allow, restrict):
            best[r] = max(s, best.get(r, -np.inf))
        return sorted(((s, r) for r, s in best.items()), key=lambda x: (-x[0], x[1]))[:k]

    def _committed(self, searcher, terms: list[str], k: int, allow: np.ndarray, restrict):
        Q, Occur = tantivy.Query, tantivy.Occur
        q = Q.boolean_query([(Occur.Should, Q.term_query(self._schema, "text", t)) for t in terms])
        if restrict is not None:
            if len(restrict) == 0:
                return []
            only = Q.const_score_query(Q.term_set_query(self._schema, "row", restrict.tolist()), 0.0)
            q = Q.boolean_query([(Occur.Must, q), (Occur.Must, only)])
        n, out, offset, limit = len(allow), [], 0, 2 * k + 16
        while True:
            hits = searcher.search(q, limit, count=False, offset=offset).hits
            found = searcher.fast_field_values("row", [a for _, a in hits]) if hits else []
            out += [(float(s), int(r)) for (s, _), r in zip(hits, found) if r < n and allow[r]]
            if len(out) >= k or len(hits) < limit:
                return out
            offset, limit = offset + limit, 2 * limit

    # -- check and repair -------------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """What `vdbctl check` reports of the committed files: missing, or failing tantivy's footer CRC."""
        with self._commit_lock:
            return damage(self.path / "tantivy")

    def rebuild(self, rows_payloads, n_rows: int) -> None:
        """Start over from `rows_payloads` ((row, payload) of every live row) with an empty tantivy index; the
        caller holds off the write path (applied()) meanwhile."""
        rows = sorted(rows_payloads, key=lambda rp: rp[0])
        with self._commit_lock, self._lock:  # searches wait: none sees the index half rebuilt
            self._writer.rollback()
            self._writer.wait_merging_threads()  # releases tantivy's writer lock before the files go
            self.fresh, self._deletes, self._watermark, self._upto = FreshTier(), [], 0, 0
            self._open_tantivy(reset=True)
            self._write_state(clean=False)
            self.applied(np.array([r for r, _ in rows], np.int64), [p for _, p in rows], (), int(n_rows))

    # -- lifecycle --------------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters for Collection.stats."""
        with self._lock:
            return {"field": self.field, "committed_docs": self._searcher.num_docs, "fresh_rows": len(self.fresh),
                    "pending_deletes": len(self._deletes), "watermark": self._watermark, "commits": self.commits,
                    "failed_commits": self.failed_commits, "segments": self._searcher.num_segments}

    def close(self, *, commit: bool = True) -> None:
        """Stop the committer; with `commit`, commit what is pending and mark the index clean."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        if commit:
            try:
                self.commit()
                self._write_state(clean=True)
            except Exception:
                log.exception("text index %s: final commit failed; the next open rebuilds from the checkpoint",
                              self.path)
        with self._commit_lock:
            self._writer.wait_merging_threads()  # releases tantivy's writer lock
            self._writer = None
