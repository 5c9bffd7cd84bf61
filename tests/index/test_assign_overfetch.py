"""How many extra heads the head search fetches when retired heads are still in it (issue 13)."""
import numpy as np

from index.assign import over_fetch, select_heads
from index.centroids import HeadIndex
from index.types import BuildParams


def test_over_fetch_follows_the_retired_share():
    assert over_fetch(32, 0, 18_000) == 0
    assert over_fetch(32, 1_569, 18_000) == 8           # 9% retired: about twice the expected dead, plus two
    assert over_fetch(32, 17_000, 18_000) == 32         # never more than the candidates wanted
    assert over_fetch(8, 3, 0) == 8                     # an empty index: the cap


def test_select_heads_never_chooses_a_retired_head_the_index_still_holds():
    rng = np.random.default_rng(0)
    heads = rng.standard_normal((3000, 16)).astype(np.float32)
    index = HeadIndex.build(heads, angular=False, kind="hnsw", m=16, ef_construction=40)
    excluded = np.zeros(len(heads), bool)
    excluded[rng.choice(len(heads), 300, replace=False)] = True   # retired, still in the HNSW graph
    x = rng.standard_normal((200, 16)).astype(np.float32)
    params = BuildParams().resolved(16)
    sel, _, nsel = select_heads(x, heads, index, params, excluded, int(excluded.sum()))
    chosen = sel[sel >= 0]
    assert (nsel >= 1).all() and not excluded[chosen].any()
