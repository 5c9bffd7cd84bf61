from __future__ import annotations

import numpy as np
import pytest

from storage.errors import CorruptionError, FormatError, TruncatedError
from storage.fileheader import HEADER_SIZE
from storage.vectors import VectorFile, row_checksums


def _write(path, rows=50, dim=8, seed=0):
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    f = VectorFile.create(path, dim)
    f.append(x[:20])
    f.append(x[20:])
    f.finish()
    f.close()
    return x


def test_round_trip_reads_exact_rows(tmp_path):
    x = _write(tmp_path / "v.f32")
    f = VectorFile.open(tmp_path / "v.f32", rows=50)
    assert np.array_equal(f.read(np.array([0, 7, 49])), x[[0, 7, 49]])
    assert np.array_equal(f.matrix()[:, :8], x)
    assert f.verify() == []
    f.close()


def test_checksums_follow_the_documented_formula_exactly():
    # (sum_j word_j * (2j + 1) + i * 0x9E3779B1) mod 2**32, spelled out in Python integers: the on-disk format
    # must not change with how the sum is computed (it was a numpy uint64 product, now a compiled loop)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 300)).astype(np.float32)
    x[0] = np.frombuffer(np.full(300, 0xFFFFFFFF, np.uint32).tobytes(), np.float32)  # largest words: overflows
    for first in (0, 7, 2**40 + 3):
        want = [(sum(int(w) * (2 * j + 1) for j, w in enumerate(row.view(np.uint32))) + (first + i) * 0x9E3779B1)
                % 2**32 for i, row in enumerate(x)]
        assert row_checksums(x, first).tolist() == want


def test_every_single_bit_flip_in_a_row_is_detected():
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    good = row_checksums(x, 5)[0]
    words = x.view(np.uint32).copy()
    for j in range(16):
        for bit in (0, 13, 31):
            flipped = words.copy()
            flipped[0, j] ^= np.uint32(1 << bit)
            assert row_checksums(flipped.view(np.float32), 5)[0] != good


def test_row_written_at_the_wrong_index_is_detected():
    x = np.ones((1, 4), np.float32)
    assert row_checksums(x, 0)[0] != row_checksums(x, 1)[0]


def test_corrupted_row_raises_with_file_and_offset(tmp_path):
    _write(tmp_path / "v.f32")
    with open(tmp_path / "v.f32", "r+b") as fh:
        fh.seek(HEADER_SIZE + 3 * 36 + 4)
        fh.write(b"\x7f")
    f = VectorFile.open(tmp_path / "v.f32", rows=50)
    with pytest.raises(CorruptionError) as e:
        f.read(np.array([2, 3]))
    assert "v.f32" in str(e.value) and "row 3" in str(e.value) and e.value.offset == HEADER_SIZE + 3 * 36
    assert f.verify() == [3]
    f.close()


def test_truncated_file_raises_truncated_error(tmp_path):
    _write(tmp_path / "v.f32")
    with open(tmp_path / "v.f32", "r+b") as fh:
        fh.truncate(HEADER_SIZE + 10 * 36)
    with pytest.raises(TruncatedError, match="v.f32"):
        VectorFile.open(tmp_path / "v.f32", rows=50)


def test_wrong_magic_is_a_format_error(tmp_path):
    (tmp_path / "junk").write_bytes(b"not a vector file" + b"\0" * 5000)
    with pytest.raises(FormatError, match="junk"):
        VectorFile.open(tmp_path / "junk", rows=0)


def test_damaged_header_is_corruption(tmp_path):
    _write(tmp_path / "v.f32")
    with open(tmp_path / "v.f32", "r+b") as fh:
        fh.seek(16)
        fh.write(b"\x09")
    with pytest.raises(CorruptionError, match="header checksum"):
        VectorFile.open(tmp_path / "v.f32", rows=50)


def test_empty_file_is_truncated(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    with pytest.raises(TruncatedError):
        VectorFile.open(tmp_path / "e", rows=0)


def test_matrix_reads_the_row_count_once(tmp_path):
    """A reader's matrix() must never see a row count and a mapping from different moments (a service search
    once failed with `cannot reshape` while an upsert appended). Deterministic: the row count grows every
    time it is read, as it would if a writer appended between two reads."""
    vf = VectorFile.create(tmp_path / "v.vec", 8)
    vf.append(np.ones((10, 8), np.float32))

    class GrowingRows(VectorFile):
        @property
        def rows(self):
            n = self.__dict__["rows"]
            self.__dict__["rows"] = n + 1  # the next read sees one more row
            return n

        @rows.setter
        def rows(self, value):
            self.__dict__["rows"] = value

    vf.__class__ = GrowingRows
    vf._file.ensure_size(4096 + 100 * vf.row_size)
    m = vf.matrix()
    assert m.shape == (10, 9)


def test_matrix_is_consistent_while_a_writer_appends(tmp_path):
    """The same race under real threads: a fixed number of appends while a reader keeps calling matrix()."""
    import sys
    import threading
    vf = VectorFile.create(tmp_path / "v.vec", 8)
    done, errors, reads = threading.Event(), [], [0]

    def writer():
        block = np.ones((10, 8), np.float32)
        for _ in range(3000):
            vf.append(block)
        done.set()

    def reader():
        while not done.is_set():
            try:
                assert vf.matrix().shape[1] == 9
                reads[0] += 1
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(e))
                return
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible, so the threads interleave
    try:
        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[0]
    assert vf.rows == 30_000 and reads[0] > 0


def test_reclaim_frees_only_blocks_whose_rows_are_all_dead(tmp_path):
    dim, n = 63, 400  # 256-byte rows: 16 to a 4 KiB block
    x = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    f = VectorFile.create(tmp_path / "v.f32", dim)
    f.append(x)
    f.finish()
    f.sync()
    full = f.allocated_bytes()
    dead = np.zeros(n, bool)
    dead[:200] = True       # blocks 1..12 (rows 0..191) and half of the block of rows 192..207
    dead[201] = False
    dead[300:305] = True    # part of one block only: nothing to free there
    freed = f.reclaim(dead)
    assert freed == 12 * 4096 and f.allocated_bytes() == full - freed
    assert f.reclaim(dead) == 0  # already freed
    live = np.flatnonzero(~dead)
    assert np.array_equal(f.read(live), x[live])  # every live row keeps its bytes and its checksum
    assert set(f.verify()) == set(range(1, 192))  # freed rows read as zeros (row 0: zeros are its checksum)
    assert f.verify(skip=dead) == []              # ... and a check skips the dead rows
    f.close()


def test_verify_holds_a_few_megabytes_whatever_the_row_count(tmp_path):
    """Regression: verify() worked in steps of 65,536 rows, holding a copy and a uint64 widening of each step:
    ~100 MB at 128 dims, paid by every open of an index with that many heads (its head rows are verified)."""
    import tracemalloc
    vf = VectorFile.create(tmp_path / "v.vec", 128)
    rng = np.random.default_rng(0)
    for _ in range(5):
        vf.append(rng.normal(size=(16_000, 128)).astype(np.float32))
    tracemalloc.start()
    try:
        assert vf.verify() == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        vf.close()
    assert peak < 16 << 20, peak


def _brute_live_per_block(n: int, row_size: int, live: np.ndarray) -> list[int]:
    """Live rows whose bytes touch each whole block of rows [0, n), counted byte range by byte range."""
    from storage.fileheader import HEADER_SIZE
    from storage.vectors import BLOCK
    out = []
    for b in range(HEADER_SIZE // BLOCK, (HEADER_SIZE + n * row_size) // BLOCK):
        lo, hi = b * BLOCK, (b + 1) * BLOCK
        out.append(sum(bool(live[r]) for r in range(n)
                       if HEADER_SIZE + r * row_size < hi and HEADER_SIZE + (r + 1) * row_size > lo))
    return out


def test_sparse_rows_and_garbage_agree_with_a_byte_by_byte_count(tmp_path, monkeypatch):
    """The per-block live counts behind sparse_rows, garbage_bytes and reclaim, computed in steps of
    SCAN_BLOCKS blocks, against a count of every row's byte range, for rows smaller and larger than a block."""
    from storage import vectors
    from storage.vectors import BLOCK, VectorFile, row_bytes
    rng = np.random.default_rng(3)
    for case in range(40):
        monkeypatch.setattr(vectors, "SCAN_BLOCKS", int(rng.choice([1, 3, 1 << 16])))
        dim = int(rng.choice([1, 7, 64, 1023, 1025, 2048]))
        n = int(rng.integers(0, 40 if dim > 500 else 400))
        vf = VectorFile.create(tmp_path / f"v{case}.f32", dim)
        try:
            vf.append(np.zeros((n, dim), np.float32))
            live = rng.random(n) < rng.random()
            counts = _brute_live_per_block(n, row_bytes(dim), live)
            held = sum(c > 0 for c in counts) * BLOCK
            last_row = ((len(counts) + vectors.FIRST_BLOCK) * BLOCK - 1 - vectors.HEADER_SIZE) // row_bytes(dim)
            garbage = max(0, held - int(live[: last_row + 1].sum()) * row_bytes(dim)) if counts else 0
            assert vf.garbage_bytes(live) == garbage, (dim, n)
            rows = vf.sparse_rows(live, int(rng.integers(1, 200)), 0, 0.3)
            assert live[rows].all() and len(np.unique(rows)) == len(rows)
            if garbage > 0.3 * held:  # something was due: the rows chosen empty the blocks they came from
                assert len(rows) > 0
                after = live.copy()
                after[rows] = False
                now = _brute_live_per_block(n, row_bytes(dim), after)
                emptied = [i for i, (c0, c1) in enumerate(zip(counts, now)) if c0 > 0 and c1 == 0]
                assert emptied
        finally:
            vf.close()
