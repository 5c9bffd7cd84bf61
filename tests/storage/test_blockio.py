"""The batch reader: the bytes of every range, whatever the alignment, with O_DIRECT + AIO and without."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from storage.blockio import PAGE, BlockReader, plan


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    data = np.random.default_rng(0).integers(0, 256, 5 * PAGE * 64 + 777, dtype=np.uint8)
    path = tmp_path_factory.mktemp("bio") / "blob"
    path.write_bytes(data.tobytes())
    return path, data


def _ranges(data, n, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 3 * PAGE, n)
    offsets = rng.integers(0, len(data) - lengths)
    return offsets, lengths


@pytest.mark.parametrize("direct", [True, False])
def test_every_range_comes_back_exactly(data_file, direct):
    path, data = data_file
    r = BlockReader(path, direct=direct)
    try:
        offsets, lengths = _ranges(data, 300, seed=1)  # more than one AIO batch of MAX_DEPTH requests? no: merged
        offsets = np.concatenate([offsets, [0, len(data) - 5, PAGE - 1]])
        lengths = np.concatenate([lengths, [1, 5, 2]])   # the first byte, the last bytes, a page straddle
        buf, starts = r.read(offsets, lengths)
        for o, n, s in zip(offsets, lengths, starts):
            assert np.array_equal(buf[s: s + n], data[o: o + n])
    finally:
        r.close()


def test_o_direct_is_used_where_the_file_system_has_it(data_file):
    path, _ = data_file
    with open("/proc/mounts") as f:
        mounts = [(line.split()[1], line.split()[2]) for line in f]
    fs_type = max((m for m in mounts if str(path).startswith(m[0])), key=lambda m: len(m[0]))[1]
    r = BlockReader(path)
    try:
        if fs_type in ("ext4", "xfs", "btrfs"):
            assert r.direct
        buf, starts = r.read([10], [100])
        assert len(buf) % PAGE == 0 and buf.ctypes.data % PAGE == 0  # aligned, as O_DIRECT needs
    finally:
        r.close()


def test_touching_ranges_are_one_read_and_pages_are_counted(data_file):
    path, data = data_file
    r = BlockReader(path, direct=False)
    try:
        r.read([0, PAGE, 2 * PAGE + 10, 10 * PAGE], [PAGE, PAGE, 5, 1])  # three touching pages, one far page
        assert r.stats.reads == 2 and r.stats.pages == 4 and r.stats.calls == 1
    finally:
        r.close()
    off, length, starts = plan(np.array([PAGE * 3 + 5, 7]), np.array([10, 10]))
    assert off.tolist() == [0, 3 * PAGE] and length.tolist() == [PAGE, PAGE]
    assert starts.tolist() == [PAGE + 5, 7]


def test_reading_past_the_end_is_an_error(data_file):
    path, data = data_file
    r = BlockReader(path)
    try:
        with pytest.raises(EOFError):
            r.read([len(data) - 10], [11])
    finally:
        r.close()


def test_threads_share_one_reader(data_file):
    path, data = data_file
    r = BlockReader(path)
    errors = []

    def work(seed):
        try:
            for i in range(20):
                offsets, lengths = _ranges(data, 40, seed * 100 + i)
                buf, starts = r.read(offsets, lengths)
                assert all(np.array_equal(buf[s: s + n], data[o: o + n]) for o, n, s in zip(offsets, lengths, starts))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r.close()
    assert not errors
