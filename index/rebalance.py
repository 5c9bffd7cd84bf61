"""SPFresh's LIRE rebalancing of a mutable SPANN index: split postings over the limit, reassign the vectors a
split may have moved closer to other heads, merge near-empty postings, garbage-collect dead records.

A mixin of MutableSpannIndex (index/mutable.py), which holds the state these methods work on; every method
runs on the maintenance thread under `maint_lock`. Reassignment writes new copies first and flips the row
state after, so a concurrent search sees exactly one set of a row's replicas (index/rowstate.py).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from index.clustering import balanced_leaves
from index.distance import head_space
from index.kernels import live_counts
from index.rowstate import DELETED, is_live, next_version
from storage.crashpoints import crashpoint
from storage.posting_format import FLAG_RETIRED

RETIRED_REBUILD = 0.10  # rebuild an HNSW head index once this share of its heads is retired
SPLIT_SLACK = 1.2       # 2-means training caps a side at 60%, so a dense sub-cluster cannot take both centres


class Rebalancing:
    def _settle(self, overflow: set[int]) -> None:
        """Split (or clean) overflowing postings until none is left; splits may overflow neighbours.

        A posting of n records needs about n / split_limit splits to come under the limit, so the budget counts
        records, not postings: a burst of inserts into a small index is settled in full, not left to a sweep
        (which only deletes and replacements trigger). The budget only stops a pathological cascade."""
        counts = self.files.postings.dir.count
        records = sum(int(counts[p]) for p in overflow)
        budget = 4 * (len(overflow) + self.files.postings.n_postings + records // self.params.split_limit)
        while overflow and budget:
            budget -= 1
            pid = overflow.pop()
            if self.files.postings.dir.flags[pid] & FLAG_RETIRED:
                continue
            overflow |= self.split(pid)

    def _live_records(self, pid: int) -> np.ndarray:
        recs = self.files.postings.records(pid)
        return recs[self.state[recs["id"]] == recs["version"]]

    def split(self, pid: int) -> set[int]:
        """Drop dead records; if still too long, split by balanced 2-means and reassign nearby vectors (LIRE).
        Returns the postings now over the split limit."""
        store = self.files.postings
        live = self._live_records(pid).copy()
        dropped = int(store.dir.count[pid]) - len(live)
        self.stats.records_dropped += dropped
        if len(live) <= self.params.split_limit:
            store.rewrite(pid, live, capacity=self.params.split_limit + 1)
            self.stats.garbage_collected += 1
            return set()
        rows = live["id"].astype(np.int64)
        hs = head_space(self.vectors_of(rows), self.metric)
        # The new heads come from the posting's *primary* members (this head is their nearest): replicas of
        # vectors from neighbouring regions would pull both centres away from the region this posting serves.
        # Balanced 2-means training keeps both centres inside the posting's mass; records then go to the nearer
        # centre, and a half still over the limit is split in turn.
        primary = self._nearest_head(hs) == pid
        train = hs[primary] if primary.sum() >= 2 else hs
        centers = balanced_leaves(train, 2, replace(self.params, balance_slack=SPLIT_SLACK),
                                  seed=self.params.seed + pid, spherical=self.metric.angular)
        if len(centers) < 2:  # all records identical: nothing to split on; let the posting grow
            store.rewrite(pid, live, capacity=len(live) + self.params.split_limit)
            return set()
        d_new = ((hs[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
        side = d_new.argmin(1)
        old_head = self._heads_matrix()[pid].copy()
        with self.files.new_heads_or_none():  # a full disk under heads.append must not leave new postings
            new_pids = store.add_postings([live[side == 0], live[side == 1]], [self.params.split_limit + 1] * 2)
            crashpoint("split")
            self.files.heads.append(centers)
            self.head_index.add(centers, new_pids)
        self._retire([pid])
        self.stats.splits += 1
        # LIRE: vectors that the old head held closer than either new head may now belong elsewhere, and
        # vectors of neighbouring postings may now be closer to a new head than to their own.
        d_old = ((hs - old_head) ** 2).sum(1)
        near_old = d_old <= d_new.min(1)
        home = np.asarray(new_pids)
        moved = [rows[near_old][~np.isin(self._nearest_head(hs[near_old]), home)]]
        for nb_rows, nb_hs in self._neighbour_candidates(old_head, centers, set(home.tolist()) | {pid}):
            moved.append(nb_rows[np.isin(self._nearest_head(nb_hs), home)])
        overflow = self.reassign(np.unique(np.concatenate(moved)))
        # a burst can leave each half over the limit too: they are split in turn
        return overflow | {int(h) for h in new_pids if store.dir.count[h] > self.params.split_limit}

    def _nearest_head(self, hs: np.ndarray) -> np.ndarray:
        """The nearest live head of each head-space vector."""
        if len(hs) == 0:
            return np.zeros(0, np.int64)
        extra = min(int(self._excluded.sum()), 8)
        _, near = self.head_index.search(hs, 1 + extra)
        if extra:
            dead = (near < 0) | self._excluded[np.maximum(near, 0)]
            near = np.take_along_axis(near, np.argsort(dead, axis=1, kind="stable"), 1)
        return near[:, 0]

    def _neighbour_candidates(self, old_head: np.ndarray, centers: np.ndarray, skip: set[int]):
        """(rows, head-space vectors) of nearby postings that are closer to a new head than to their own: SPFresh
        moves such a vector when a new head became its nearest one (checked by the caller)."""
        k = self.params.reassign_neighbors
        if k == 0:
            return
        _, near = self.head_index.search(old_head[None, :], k + len(skip) + min(int(self._excluded.sum()), k))
        heads = self._heads_matrix()
        seen = 0
        for nb in near[0]:
            if nb < 0 or nb in skip or self._excluded[nb]:
                continue
            seen += 1
            recs = self._live_records(int(nb))
            if len(recs):
                rows = recs["id"].astype(np.int64)
                y = head_space(self.vectors_of(rows), self.metric)
                d_own = ((y - heads[nb]) ** 2).sum(1)
                closer = ((y[:, None, :] - centers[None, :, :]) ** 2).sum(-1).min(1) < d_own
                if closer.any():
                    yield rows[closer], y[closer]
            if seen == k:
                break

    def reassign(self, rows: np.ndarray, excluded: np.ndarray | None = None) -> set[int]:
        """Give rows a new version and new postings (their RNG-chosen heads now, never `excluded` ones): new
        copies are written first, then the state flips. Returns the postings now over the split limit."""
        if len(rows) == 0:
            return set()
        with self.lock:
            rows = rows[is_live(self.state[rows])]
            new_version = next_version(self.state[rows])
        if len(rows) == 0:
            return set()
        overflow = self._place(rows, new_version.astype(np.uint8), excluded)
        crashpoint("reassign")
        with self.lock:  # copy on write: a search that read the old array keeps a consistent view
            buf = self._state_buf.copy()
            state = buf[: len(self.state)]
            still = is_live(state[rows])  # deleted meanwhile: keep the deleted bit
            state[rows] = np.where(still, new_version, state[rows] | DELETED).astype(np.uint8)
            self._state_buf, self.state = buf, state
        self.stats.reassigned += len(rows)
        return overflow

    def sweep(self, max_jobs: int = 0) -> bool:
        """Merge postings that deletes or reassignments left with too few live records and garbage-collect
        postings that are mostly dead records: at most `max_jobs` merges and rewrites (0: no bound), the
        emptiest postings first. Returns whether work is left for another call.

        A posting is merged only when dead records took it under merge_limit (it held at least merge_limit
        records, or lost half of them): a bulk build leaves many postings small by design, and merging them
        all on the first sweep after a few deletes cost a third of the inserts' work at once."""
        with self.maint_lock:
            if not self.bootstrapped:
                return False
            store = self.files.postings
            d = store.dir
            buf = store.buffer
            live = live_counts(buf[: len(buf) // 4 * 4].view(np.uint32), buf, d.offset, d.count, store.rec_size,
                               self.state)
            alive = (d.flags & FLAG_RETIRED) == 0
            count = d.count.astype(np.int64)
            shrunk = (live < self.params.merge_limit) & ((count >= self.params.merge_limit) | (live * 2 <= count))
            merges = np.nonzero(alive & shrunk)[0]
            merges = merges[np.argsort(live[merges], kind="stable")]
            budget = max_jobs if max_jobs > 0 else len(merges) + len(count)
            overflow: set[int] = set()
            for pid in merges[:budget]:
                if int(alive.sum()) <= 1:
                    break
                overflow |= self._merge(int(pid))
                alive[pid] = False
            budget -= min(budget, len(merges))
            cleanups = np.nonzero(alive & (((count >= 16) & (live * 2 < count))
                                           | (count > self.params.split_limit)))[0]
            for pid in cleanups[:budget]:
                overflow |= self.split(int(pid))
            self._settle(overflow)
            return max_jobs > 0 and len(merges) + len(cleanups) > max_jobs  # the rest waits for the next call

    def _merge(self, pid: int) -> set[int]:
        """Retire a posting with few live records; its vectors move to their next best postings."""
        rows = self._live_records(pid)["id"].astype(np.int64)
        excluded = self._excluded.copy()
        excluded[pid] = True
        overflow = self.reassign(rows, excluded)  # new copies land elsewhere before the posting goes
        self._retire([pid])
        self.stats.merges += 1
        return overflow

    def _retire(self, pids: list[int]) -> None:
        self.files.postings.retire(pids)
        self._excluded = self._retired_mask()
        if self.head_index.remove(np.asarray(pids)):
            return  # gone from a flat head index at once
        self._retired_in_head_index += len(pids)
        if self._retired_in_head_index > RETIRED_REBUILD * max(self.head_index.size, 1):
            self.rebuild_head_index()  # retired heads sit where splits happen, i.e. where queries land
