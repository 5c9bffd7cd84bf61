"""Serving a mutable index (a collection's) from disk under a memory budget: the committed and indexed data
is searched through index/diskread.py (O_DIRECT reads of the probed postings and the re-rank rows, a ring cache
of the postings read most), while writes go on.

What keeps the disk path right while the index changes under it:
  * the posting cache keys an entry by (posting, offset, count): an append grows a posting in place after its
    `count` records, which are never rewritten, and every other change writes a fresh extent;
  * postings added by splits are verified on their first read like the others;
  * the readers re-read the file size when a read goes past it (rows and extents appended since);
  * a compaction serves a new posting file: the searcher is renewed over it, and the replaced one stays open
    for the searches still in flight until the next renewal (as the replaced posting store does), its cache
    emptied at once so the budget is not paid twice.
Unindexed rows (the collection's memtable) are scanned exactly by the caller, as with mmap.

A mixin of MutableSpannIndex (index/mutable.py) over SpannIndex's `use_disk` / `disk`.
"""
from __future__ import annotations

from storage.posting_cache import PostingCache


class LiveDiskServing:
    disk: "object"   # index.diskread.DiskSearcher or None, set by SpannIndex.use_disk
    _disk_budget_mb: float | None = None
    _replaced_disk = None

    def serve_from_disk(self, memory_budget_mb: float) -> None:
        """Search from disk within `memory_budget_mb` from now on (what SpannIndex.open(memory_budget_mb=...)
        does for a read-only index); the cache gets what the resident structures leave of it now."""
        self.use_disk(memory_budget_mb)
        self._disk_budget_mb = float(memory_budget_mb)

    @property
    def serves_from_disk(self) -> bool:
        """True when searches read postings and re-rank rows from disk (serve_from_disk)."""
        return self.disk is not None

    def _renew_disk(self) -> None:
        """After the posting file was replaced (compaction): a searcher over the new file."""
        if self.disk is None or self._disk_budget_mb is None:
            return
        old = self.disk
        self.use_disk(self._disk_budget_mb)
        if self._replaced_disk is not None:
            self._replaced_disk.close()
        old.cache = PostingCache(0)   # searches in flight finish with their own reads; the ring is freed
        self._replaced_disk = old

    def _close_replaced_disk(self) -> None:
        if self._replaced_disk is not None:
            self._replaced_disk.close()
            self._replaced_disk = None
