"""Hugging Face datasets as numbered rows: a `save_to_disk` folder, a folder of Parquet shards,
or hf:NAME through `datasets.load_dataset` (the local HF cache offline, the Hub online).

Rows are numbered across the whole source (so each has one number in `rejects`); messages
name a shard's row within its shard. The fingerprint is SHA-256 over the data files' hashes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from catalog.errors import InvalidInput
from catalog.readers import RowSource, arrow_rows, file_sha256, parquet_rows


def read_folder(path: Path, split: str | None) -> RowSource:
    """A `save_to_disk` folder (Dataset or DatasetDict), else every .parquet file under `path`."""
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return _saved_dataset(path, split)
    shards = sorted((p for p in path.rglob("*.parquet") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    if split is not None:
        shards = [p for p in shards if _in_split(p.relative_to(path), split)]
    if not shards:
        wanted = f" of split {split!r}" if split is not None else ""
        raise InvalidInput(
            f"{path}: no .parquet files{wanted} and not a `datasets` save_to_disk folder; "
            f"for other files in a folder use hf:{path}"
        )
    rows, columns, hashes = [], [], []
    for shard in shards:
        name = shard.relative_to(path).as_posix()
        shard_rows, shard_columns = parquet_rows(shard, start=len(rows) + 1, part=f"shard {name}")
        rows += shard_rows
        columns += [column for column in shard_columns if column not in columns]
        hashes.append(f"{name} {file_sha256(shard)}")
    location = f"{path.resolve()}?split={split}" if split else str(path.resolve())
    return RowSource(str(path), location, "parquet-dir", "row", rows, _combined(hashes), columns)


def read_hub(name: str, split: str | None) -> RowSource:
    """hf:NAME: `datasets.load_dataset(NAME, split=...)`, which also takes a local folder of data files."""
    import datasets

    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_dataset(name, split=split)
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidInput(
            f"hf:{name}: cannot load it ({first_line}); check the name and --split, "
            "and that it is in the local HF cache when offline"
        ) from None
    dataset, split = _one_split(loaded, split, f"hf:{name}")
    location = f"hf:{name}?split={split}" if split else f"hf:{name}"
    return _dataset_source(dataset, location, location, "hf-hub")


def _saved_dataset(path: Path, split: str | None) -> RowSource:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{path}: not a readable `datasets` save_to_disk folder ({error})") from None
    if split is not None and not isinstance(loaded, datasets.DatasetDict):
        raise InvalidInput(f"{path} holds one dataset, not splits; drop --split")
    dataset, split = _one_split(loaded, split, str(path))
    label = f"{path} (split {split})" if split else str(path)
    location = f"{path.resolve()}?split={split}" if split else str(path.resolve())
    return _dataset_source(dataset, label, location, "hf-disk")


def _one_split(loaded: Any, split: str | None, label: str) -> tuple[Any, str | None]:
    """The Dataset to read: `loaded` itself, or the split of a DatasetDict (the only one when not named)."""
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return loaded, split
    if split is None and len(loaded) == 1:
        split = next(iter(loaded))
    if split not in loaded:
        asked = "choose one with --split" if split is None else f"there is no split {split!r}"
        raise InvalidInput(f"{label} has splits {', '.join(loaded)}; {asked}")
    return loaded[split], split


def _dataset_source(dataset: Any, label: str, location: str, file_format: str) -> RowSource:
    table = dataset.with_format("arrow")[:]  # honours a selection or shuffle (the indices mapping)
    hashes = sorted(f"{Path(f['filename']).name} {file_sha256(Path(f['filename']))}" for f in dataset.cache_files)
    return RowSource(
        label, location, file_format, "row", arrow_rows(table, start=1), _combined(hashes), table.column_names
    )


def _in_split(relative: Path, split: str) -> bool:
    """Whether a shard belongs to `split` by the Hub's naming: data/train-00000-of-00002.parquet, train/x.parquet."""
    return split in relative.parts[:-1] or relative.name.startswith((f"{split}-", f"{split}."))


def _combined(hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode("utf-8")).hexdigest()
