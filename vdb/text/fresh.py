"""The fresh tier of the text index: rows applied since the last text commit, scored with BM25 in RAM.

A tantivy commit costs tens of milliseconds (hundreds with a busy disk), far too much per write, so a write is
visible to text search at once through this tier and reaches tantivy's segments in the background (index.py).
Scores use tantivy's BM25 (k1 = 1.2, b = 0.75, idf = ln(1 + (N - df + 0.5) / (df + 0.5))) with statistics of
both tiers together, so a document scores (nearly) the same before and after its commit: N, df and the token
count add the committed segments' figures to this tier's, and document lengths are exact here while tantivy
quantises those above 40 tokens to a byte.

Not thread-safe by itself: TextIndex calls it under its lock.
"""
from __future__ import annotations

from collections import Counter

K1, B = 1.2, 0.75  # tantivy's BM25 constants (tantivy/src/query/bm25.rs)


def bm25_idf(df: int, n_docs: int) -> float:
    """tantivy's idf."""
    import math
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


class FreshTier:
    def __init__(self):
        self.docs: dict[int, tuple[Counter, int, str]] = {}   # row -> (term counts, length, text)
        self.postings: dict[str, set[int]] = {}
        self.tokens = 0
        self.in_flight: set[int] = set()                        # handed to a commit that has not landed yet

    def __len__(self) -> int:
        return len(self.docs)

    def add(self, row: int, terms: list[str], text: str) -> None:
        """A new row with its analysed terms (rows never change their text: an upsert makes a new row)."""
        counts = Counter(terms)
        self.docs[row] = (counts, len(terms), text)
        self.tokens += len(terms)
        for t in counts:
            self.postings.setdefault(t, set()).add(row)

    def remove(self, row: int) -> None:
        """Forget a row (deleted, replaced, or now in a committed segment); unknown rows are ignored."""
        doc = self.docs.pop(row, None)
        if doc is None:
            return
        self.in_flight.discard(row)
        self.tokens -= doc[1]
        for t in doc[0]:
            rows = self.postings[t]
            rows.discard(row)
            if not rows:
                del self.postings[t]

    def take_pending(self) -> list[tuple[int, str, int]]:
        """(row, text, length) of every row not yet handed to a commit, marked in flight, in row order."""
        out = sorted((r, d[2], d[1]) for r, d in self.docs.items() if r not in self.in_flight)
        self.in_flight.update(r for r, _, _ in out)
        return out

    def pending(self) -> int:
        return len(self.docs) - len(self.in_flight)

    def give_back(self, rows) -> None:
        """A commit failed: its rows are pending again."""
        self.in_flight.difference_update(rows)

    def doc_freq(self, term: str) -> int:
        return len(self.postings.get(term, ()))

    def score(self, terms: list[str], df: dict[str, int], n_docs: int, avg_len: float) -> dict[int, float]:
        """BM25 of every fresh row holding any of `terms` (distinct), with the global df / N / average length."""
        out: dict[int, float] = {}
        for t in terms:
            rows = self.postings.get(t)
            if not rows:
                continue
            w = bm25_idf(df[t], n_docs) * (1.0 + K1)
            for r in rows:
                counts, length, _ = self.docs[r]
                tf = counts[t]
                out[r] = out.get(r, 0.0) + w * tf / (tf + K1 * (1.0 - B + B * length / avg_len))
        return out
