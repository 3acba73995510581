"""Arrow IPC volume shards: immutable, content-addressed, one record batch per volume.

Why Arrow IPC files: they memory-map, so reading volume k of a shard touches only that record
batch (no gzip inflate as with .nii.gz), and the footer gives random access by batch index.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from warehouse.schema import SHARD_COLUMNS

_TYPES = {
    "string": pa.string(),
    "binary": pa.binary(),
    "list<int32>": pa.list_(pa.int32()),
    "list<float32>": pa.list_(pa.float32()),
    "list<float64>": pa.list_(pa.float64()),
}
SHARD_SCHEMA = pa.schema([(name, _TYPES[typ]) for name, typ in SHARD_COLUMNS])


@dataclass(frozen=True)
class ShardVolume:
    """One volume as stored in (or read from) a shard."""

    volume_id: str
    subject_id: str
    label: str
    data: np.ndarray  # [D, H, W] float16 on the model grid
    mask: np.ndarray  # [D, H, W] uint8 brain mask
    spacing: tuple[float, float, float]
    affine: np.ndarray  # [4, 4]


@dataclass(frozen=True)
class ShardInfo:
    shard_id: str
    path: Path
    n_volumes: int
    bytes: int


def _batch(v: ShardVolume) -> pa.RecordBatch:
    data = np.ascontiguousarray(v.data, dtype=np.float16)
    mask = np.ascontiguousarray(v.mask, dtype=np.uint8)
    if data.shape != mask.shape:
        raise ValueError(f"volume {v.volume_id}: data shape {data.shape} != mask shape {mask.shape}")
    arrays = [
        pa.array([v.volume_id]),
        pa.array([v.subject_id]),
        pa.array([v.label]),
        pa.array([list(data.shape)], type=pa.list_(pa.int32())),
        pa.array([list(v.spacing)], type=pa.list_(pa.float32())),
        pa.array([np.asarray(v.affine, dtype=np.float64).ravel().tolist()], type=pa.list_(pa.float64())),
        pa.array(["float16"]),
        pa.array([data.tobytes()], type=pa.binary()),
        pa.array([mask.tobytes()], type=pa.binary()),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=SHARD_SCHEMA)


def write_shard(volumes: Sequence[ShardVolume], shards_dir: Path) -> ShardInfo:
    """Write volumes to a temp file, hash it, and rename it to its content address atomically.

    A crash leaves only a `.tmp` file (ignored by readers); a rerun with the same volumes produces
    the same bytes and therefore the same shard id, so nothing is duplicated.
    """
    if not volumes:
        raise ValueError("write_shard needs at least one volume")
    shards_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=shards_dir, suffix=".arrow.tmp")
    os.close(fd)
    try:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, SHARD_SCHEMA) as writer:
            for v in volumes:
                writer.write_batch(_batch(v))
        digest = hashlib.sha256()
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        shard_id = digest.hexdigest()[:24]
        final = shards_dir / f"{shard_id}.arrow"
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ShardInfo(shard_id=shard_id, path=final, n_volumes=len(volumes), bytes=final.stat().st_size)


def _decode(batch: pa.RecordBatch) -> ShardVolume:
    row = {name: batch.column(i)[0].as_py() for i, name in enumerate(SHARD_SCHEMA.names) if name != "data"}
    shape = tuple(row["shape"])
    data_buf = batch.column(SHARD_SCHEMA.get_field_index("data"))[0].as_buffer()
    data = np.frombuffer(data_buf, dtype=np.float16).reshape(shape)
    mask = np.frombuffer(row["mask"], dtype=np.uint8).reshape(shape)
    return ShardVolume(
        volume_id=row["volume_id"],
        subject_id=row["subject_id"],
        label=row["label"],
        data=data,
        mask=mask,
        spacing=tuple(row["spacing"]),
        affine=np.asarray(row["affine"], dtype=np.float64).reshape(4, 4),
    )


class ShardReader:
    """Random access to the volumes of one shard through a memory map."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))

    def __len__(self) -> int:
        return self._reader.num_record_batches

    def read(self, batch_index: int) -> ShardVolume:
        if not 0 <= batch_index < len(self):
            raise IndexError(f"{self.path.name} has {len(self)} volumes; batch {batch_index} does not exist")
        return _decode(self._reader.get_batch(batch_index))
