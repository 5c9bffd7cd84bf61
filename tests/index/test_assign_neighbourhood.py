"""The bulk build's assignment from each row's leaf head: the head graph, the neighbourhood kernel, the owners the
clustering reports, and the assignment they give against exact candidates."""
import faiss
import numpy as np
import pytest

from index.assign import closure_assign, head_graph
from index.centroids import HeadIndex
from index.clustering import cluster_heads, hierarchical_heads
from index.kernels import balanced_assign, neighbourhood_candidates
from index.types import BuildParams
from vdb.inputs.synthetic import clustered

DIM = 16


def _rows_sets(a, n):
    sets = [set() for _ in range(n)]
    for h in range(len(a.starts) - 1):
        for v in a.members(h):
            sets[int(v)].add(h)
    return sets


def _agreement(a, b, n):
    sa, sb = _rows_sets(a, n), _rows_sets(b, n)
    return float(np.mean([len(x & y) / len(y) for x, y in zip(sa, sb)]))


@pytest.fixture(scope="module")
def clustering():
    base = clustered(20_000, DIM)
    params = BuildParams().resolved(DIM)
    return base, params, cluster_heads(base, 600, params, spherical=False)


def test_neighbourhood_candidates_are_the_exact_nearest_of_the_start_heads_neighbourhood():
    rng = np.random.default_rng(0)
    heads = rng.standard_normal((500, DIM)).astype(np.float32)
    x = rng.standard_normal((300, DIM)).astype(np.float32)
    graph = np.stack([rng.choice(500, 40, replace=False) for _ in range(500)]).astype(np.int32)
    graph[::3, 30:] = -1  # fewer neighbours than the width
    start = rng.integers(0, 500, 300)
    cand = np.empty((300, 12), np.int64)
    cand_d = np.empty((300, 12), np.float32)
    neighbourhood_candidates(x, heads, start, graph, cand, cand_d)
    for i in range(300):
        g = graph[start[i]]
        g = g[g >= 0]
        d = ((heads[g] - x[i]) ** 2).sum(1)
        expect = g[np.argsort(d, kind="stable")[:12]]
        assert set(cand[i]) == set(expect)
        assert np.all(np.diff(cand_d[i]) >= 0)
        np.testing.assert_allclose(cand_d[i], np.sort(d)[:12], rtol=1e-4)


def test_neighbourhood_candidates_pad_when_the_neighbourhood_is_smaller_than_asked():
    heads = np.eye(4, DIM, dtype=np.float32)
    graph = np.array([[0, 1, -1, -1]] * 4, np.int32)
    cand = np.empty((1, 3), np.int64)
    cand_d = np.empty((1, 3), np.float32)
    neighbourhood_candidates(heads[:1], heads, np.array([0]), graph, cand, cand_d)
    assert list(cand[0]) == [0, 1, -1] and np.isinf(cand_d[0, 2])


def test_head_graph_lists_each_head_first_then_its_nearest_other_heads():
    rng = np.random.default_rng(1)
    heads = rng.standard_normal((300, DIM)).astype(np.float32)
    graph = head_graph(heads, HeadIndex.build(heads, angular=False, kind="flat"), 10)
    assert graph.shape == (300, 11) and (graph[:, 0] == np.arange(300)).all()
    _, exact = faiss.knn(heads, heads, 11)  # exact, itself first (distinct random heads)
    assert (exact[:, 0] == np.arange(300)).all()
    assert (graph[:, 1:] == exact[:, 1:]).all()
    small = head_graph(heads[:5], HeadIndex.build(heads[:5], angular=False, kind="flat"), 10)
    assert small.shape == (5, 5) and all(set(row) == set(range(5)) for row in small)  # width clipped to H - 1


def test_cluster_heads_reports_each_rows_nearest_head_in_its_leaf(clustering):
    base, params, result = clustering
    heads, owner = result.heads, result.owner
    assert owner.shape == (len(base),) and owner.min() >= 0 and owner.max() < len(heads)
    own_d = ((base - heads[owner]) ** 2).sum(1)
    nearest_d, nearest = faiss.knn(base, heads, 1)
    assert (own_d >= nearest_d[:, 0] * (1 - 1e-4) - 1e-5).all()  # never nearer than the nearest head
    assert np.mean(owner == nearest[:, 0]) > 0.85                 # and usually the nearest of all heads
    assert np.array_equal(hierarchical_heads(base, 600, params, spherical=False), heads)


def test_cluster_heads_do_not_depend_on_the_number_of_threads(clustering):
    base, params, result = clustering
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        one = cluster_heads(base, 600, params, spherical=False)
    finally:
        faiss.omp_set_num_threads(before)
    assert np.array_equal(one.heads, result.heads) and np.array_equal(one.owner, result.owner)


def test_cluster_heads_without_owners_gives_the_same_heads_and_no_owners(clustering):
    base, params, result = clustering
    plain = cluster_heads(base, 600, params, spherical=False, owners=False)
    assert np.array_equal(plain.heads, result.heads)
    assert (plain.owner == -1).all() and (result.owner >= 0).all()


def test_assignment_from_owners_chooses_the_heads_exact_candidates_choose(clustering):
    base, params, result = clustering
    heads, owner = result.heads, result.owner
    approx = HeadIndex.build(heads, angular=False, kind="hnsw", m=16, ef_construction=40)
    exact = closure_assign(base, len(base), heads, HeadIndex.build(heads, angular=False, kind="flat"), params)
    ours = closure_assign(base, len(base), heads, approx, params, owner=owner)
    assert np.bincount(ours.vec, minlength=len(base)).min() >= 1
    assert _agreement(ours, exact, len(base)) > 0.97
    # the owners are what it starts from: heads picked at random instead lose most of the choices
    wrong = np.random.default_rng(2).integers(0, len(heads), len(base)).astype(np.int32)
    assert _agreement(closure_assign(base, len(base), heads, approx, params, owner=wrong), exact, len(base)) < 0.5
    # a row without an owner searches the head index instead
    partial = owner.copy()
    partial[::2] = -1
    mixed = closure_assign(base, len(base), heads, approx, params, owner=partial)
    assert np.bincount(mixed.vec, minlength=len(base)).min() >= 1
    assert _agreement(mixed, exact, len(base)) > 0.95


def test_visiting_rows_grouped_by_leaf_head_changes_no_rows_choice(clustering, monkeypatch):
    # the leaf assignment sorts each step's rows by leaf head (cache locality) and puts the choices back in
    # row order: every row gets exactly what the kernels give it alone, whatever the step size
    import index.assign as assign_module
    from index.assign import neighbourhood_heads, select_heads
    base, params, result = clustering
    heads, owner = result.heads, result.owner.copy()
    owner[::7] = -1                                           # some rows search the head index instead
    approx = HeadIndex.build(heads, angular=False, kind="hnsw", m=16, ef_construction=40)
    graph = head_graph(heads, approx, 2 * params.candidates)
    known = owner >= 0
    want = np.full((len(base), params.max_replicas), -1, np.int64)
    want[known] = neighbourhood_heads(base[known], owner[known], heads, graph, params, 1)[0]
    want[~known] = select_heads(base[~known], heads, approx, params)[0]
    for step_bytes in (1 << 30, 1):                           # one step; steps of CHUNK (1,000) rows
        monkeypatch.setattr(assign_module, "LEAF_STEP_BYTES", step_bytes)
        monkeypatch.setattr(assign_module, "CHUNK", 1000)
        got = closure_assign(base, len(base), heads, approx, params, owner=owner)
        sets = _rows_sets(got, len(base))
        assert all(sets[i] == set(want[i][want[i] >= 0].tolist()) for i in range(len(base)))


def test_balanced_assign_gives_each_row_its_nearest_column_with_room_in_regret_order():
    rng = np.random.default_rng(4)
    D = rng.random((200, 7)).astype(np.float32)
    D[:, 0] *= 0.2  # column 0 is everybody's favourite and fills up
    labels = balanced_assign(D, 40)
    assert np.bincount(labels, minlength=7).max() <= 40
    srt = np.sort(D, 1)
    order = np.argsort(-(srt[:, 1] - srt[:, 0]), kind="stable")
    counts = np.zeros(7, int)
    for i in order:  # the rule, spelled out
        room = np.nonzero(counts < 40)[0]
        assert labels[i] == room[np.argmin(D[i, room])]
        counts[labels[i]] += 1


def test_a_build_with_leaf_assign_puts_every_row_in_a_posting(tmp_path):
    from index import SpannIndex, build_index
    base = clustered(6000, DIM)
    params = BuildParams(leaf_assign=True, head_index="hnsw", head_ratio=0.05, target_recall=0)
    summary = build_index(base, tmp_path / "idx", params=params)
    assert summary["vectors_without_posting"] == 0
    with SpannIndex.open(tmp_path / "idx") as idx:
        assert idx.files.manifest["build_params"]["leaf_assign"] is True
        found, _ = idx.search(base[:50], 1, nprobe=idx.head_count())
    assert (found[:, 0] == np.arange(50)).mean() > 0.9
