"""Arrow shards: round trip, content addressing, atomicity, random access."""

from __future__ import annotations

import numpy as np
import pytest

from warehouse.shards import ShardReader, ShardVolume, write_shard


def _vol(i: int, shape=(6, 7, 5)) -> ShardVolume:
    rng = np.random.default_rng(i)
    return ShardVolume(
        volume_id=f"vol-{i}",
        subject_id=f"sub-{i % 2}",
        label="T1w",
        data=rng.random(shape).astype(np.float16),
        mask=(rng.random(shape) > 0.5).astype(np.uint8),
        spacing=(1.5, 1.5, 2.0),
        affine=np.diag([1.5, 1.5, 2.0, 1.0]),
    )


def test_round_trip_and_random_access(tmp_path):
    vols = [_vol(i) for i in range(3)]
    info = write_shard(vols, tmp_path)
    assert info.n_volumes == 3 and info.path.exists() and info.path.name == f"{info.shard_id}.arrow"
    reader = ShardReader(info.path)
    assert len(reader) == 3
    got = reader.read(2)
    assert got.volume_id == "vol-2" and got.subject_id == "sub-0"
    np.testing.assert_array_equal(got.data, vols[2].data)
    np.testing.assert_array_equal(got.mask, vols[2].mask)
    np.testing.assert_allclose(got.affine, vols[2].affine)
    assert got.spacing == (1.5, 1.5, 2.0)


def test_same_content_same_name_no_temp_left(tmp_path):
    a = write_shard([_vol(0), _vol(1)], tmp_path)
    b = write_shard([_vol(0), _vol(1)], tmp_path)
    c = write_shard([_vol(1), _vol(0)], tmp_path)
    assert a.shard_id == b.shard_id != c.shard_id
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({a.path.name, c.path.name})


def test_bad_index_and_shape_mismatch(tmp_path):
    info = write_shard([_vol(0)], tmp_path)
    with pytest.raises(IndexError, match="has 1 volumes"):
        ShardReader(info.path).read(1)
    bad = ShardVolume(
        "v",
        "s",
        "T1w",
        np.zeros((2, 2, 2), np.float16),
        np.zeros((2, 2, 3), np.uint8),
        (1.0, 1.0, 1.0),
        np.eye(4),
    )
    with pytest.raises(ValueError, match="shape"):
        write_shard([bad], tmp_path / "x")
    assert not any((tmp_path / "x").glob("*.tmp"))
