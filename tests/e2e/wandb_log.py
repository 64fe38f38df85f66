"""Read a W&B run's transaction log (`run-<id>.wandb`, written in offline mode) back into its records.

W&B ships no reader for it any more; the format is LevelDB's log: a 7-byte header (":W&B", magic 0xBEE1,
version 0), then 32 KiB blocks of chunks, each a 7-byte header (CRC-32, length, type) and its bytes; a
record is one FULL chunk or FIRST, MIDDLE..., LAST. Each record is a `wandb_internal.Record` protobuf.
"""

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

FILE_HEADER = 7
BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    found, pending, offset = [], b"", FILE_HEADER
    while offset + CHUNK_HEADER <= len(data):
        if BLOCK - offset % BLOCK < CHUNK_HEADER:  # a block's tail too short for a header is padding
            offset += BLOCK - offset % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + CHUNK_HEADER])
        chunk = data[offset + CHUNK_HEADER : offset + CHUNK_HEADER + length]
        offset += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue  # zero padding at a block's end
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
    return found


def history(path: Path) -> dict[int, dict[str, Any]]:
    """The metrics logged at each step (W&B's own `_step`, `_runtime`, ... left out)."""
    steps: dict[int, dict[str, Any]] = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            items = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            steps.setdefault(record.history.step.num, {}).update(
                {key: value for key, value in items.items() if not key.startswith("_")}
            )
    return steps


def run_record(path: Path) -> Any:
    return next(record.run for record in records(path) if record.WhichOneof("record_type") == "run")


def exit_code(path: Path) -> int | None:
    exits = [record.exit.exit_code for record in records(path) if record.WhichOneof("record_type") == "exit"]
    return exits[-1] if exits else None
