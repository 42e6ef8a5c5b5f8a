"""Hugging Face datasets as numbered rows: a `save_to_disk` folder, a folder of Parquet shards,
or hf:NAME through `datasets.load_dataset` (the local HF cache offline, the Hub online); and one
data file of a Hub dataset repository (`hub_dataset_file`), as the named test sets are read.

Rows are numbered across the whole source (so each has one number in `rejects`); messages
name a shard's row within its shard. The fingerprint is SHA-256 over the data files' hashes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from pathlib import Path
from typing import Any

from catalog.errors import InvalidInput
from catalog.readers import RowSource, arrow_rows, file_sha256, name_text, parquet_rows


def read_folder(path: Path, split: str | None) -> RowSource:
    """A `save_to_disk` folder (Dataset or DatasetDict), else every .parquet file under `path` (see `_shards`)."""
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return _saved_dataset(path, split)
    label = name_text(path)
    shards = _shards(path, label)
    if split is not None:
        shards = [p for p in shards if _in_split(p, split)]
    if not shards:
        wanted = f" of split {split!r}" if split is not None else ""
        raise InvalidInput(
            f"{label}: no .parquet files{wanted} and not a `datasets` save_to_disk folder; "
            f"for other files in a folder use hf:{label}"
        )
    rows, columns, hashes = [], [], []
    for shard in shards:
        name = name_text(shard)
        shard_rows, shard_columns = parquet_rows(path / shard, start=len(rows) + 1, part=f"shard {name}")
        rows += shard_rows
        columns += [column for column in shard_columns if column not in columns]
        hashes.append(f"{name} {file_sha256(path / shard)}")
    location = name_text(path.resolve()) + (f"?split={split}" if split else "")
    return RowSource(label, location, "parquet-dir", "row", rows, _combined(hashes), columns)


def read_hub(name: str, split: str | None) -> RowSource:
    """hf:NAME: `datasets.load_dataset(NAME, split=...)`, which also takes a local folder of data files."""
    label = f"hf:{name_text(name)}"
    if not name.strip():
        raise InvalidInput(
            "hf: needs a dataset name after it: hf:ORG/NAME (the Hub, or the local HF cache offline) "
            "or hf:FOLDER (a folder of data files)"
        )
    dataset, split = _one_split(_load_dataset(name, split, label), split, label)
    location = f"{label}?split={split}" if split else label
    return _dataset_source(dataset, location, location, "hf-hub")


def hub_dataset_file(repo_id: str, filename: str, label: str, command: str) -> Path:
    """The local path of `filename` in the Hub dataset `repo_id`: from the HF cache, else downloaded into it.

    `datasets.load_dataset` cannot serve here: offline it reads only the Arrow cache of an earlier
    online load, never the Hub's files in the HF cache, and since datasets 4 it refuses every
    repository that still carries a loading script (tatsu-lab/alpaca_eval, GAIR/lima) although their
    data files are plain JSON. `label` names what is wanted and `command` the verb that would download
    it, in the one-line errors."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if HF_HUB_OFFLINE:
        raise InvalidInput(
            f"{label}: {filename} of the Hub dataset {repo_id} is not in the local Hugging Face cache "
            f"({HF_HUB_CACHE}); download it there (hf download --repo-type dataset {repo_id} {filename}) "
            f"or unset HF_HUB_OFFLINE to let `{command}` download it"
        )
    try:
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset"))
    except (HfHubHTTPError, LocalEntryNotFoundError) as error:
        raise InvalidInput(
            f"{label}: could not download {filename} of the Hub dataset {repo_id} from {ENDPOINT} into "
            f"{HF_HUB_CACHE} ({_first_line(error)}); for a gated dataset, accept its terms on the Hub and "
            "run `hf auth login`"
        ) from None


def _shards(root: Path, label: str) -> list[Path]:
    """The .parquet files under `root`, as paths relative to it in name order, links to folders and files followed.

    Real sub-folders are walked before linked ones, so a shard keeps its own path where it has one; a folder
    or file reached twice (a second link, a link to an ancestor) is read once; a .parquet link to nothing is
    refused, never skipped.
    """
    walked: set[tuple[int, int]] = set()
    found: dict[tuple[int, int], Path] = {}
    real, linked = deque([Path()]), deque()
    while real or linked:
        folder = real.popleft() if real else linked.popleft()
        identity = _identity((root / folder).stat())
        if identity in walked:
            continue
        walked.add(identity)
        for entry in _entries(root, folder, label):
            relative = folder / entry.name
            if _is_folder(entry):
                (linked if entry.is_symlink() else real).append(relative)
            elif entry.name.endswith(".parquet"):
                found.setdefault(_identity(_shard_stat(entry, relative, label)), relative)
    return sorted(found.values(), key=lambda p: p.as_posix())


def _entries(root: Path, folder: Path, label: str) -> list[os.DirEntry]:
    try:
        with os.scandir(root / folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as error:
        raise InvalidInput(
            f"{label}: cannot read the folder {name_text(folder)} ({error.strerror}); "
            "make it readable or move it out of the folder"
        ) from None


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether `entry` is a folder or a link to one; a link in a loop of links is neither."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _shard_stat(entry: os.DirEntry, relative: Path, label: str) -> os.stat_result:
    """The file a .parquet entry names (a link followed); InvalidInput if there is none or it is not a file."""
    try:
        info = entry.stat()
    except OSError:
        target = f" ({name_text(os.readlink(entry.path))})" if entry.is_symlink() else ""
        raise InvalidInput(
            f"{label}: {name_text(relative)} is a link to nothing readable{target}; fix or remove the link"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(f"{label}: {name_text(relative)} is not a file; move it out of the folder")
    return info


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _load_dataset(name: str, split: str | None, label: str) -> Any:
    """`datasets.load_dataset`, its failures as one line (its own log of them silenced: it repeats them)."""
    import datasets
    from datasets.exceptions import DatasetGenerationError, DatasetsError

    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        return datasets.load_dataset(name, split=split)
    except UnicodeError:
        raise InvalidInput(
            f"{label}: `datasets` cannot read names that are not UTF-8; rename them, "
            "or ingest a folder of Parquet shards without hf:"
        ) from None
    except DatasetGenerationError as error:
        raise InvalidInput(f"{label}: {_generation_problem(error)}") from None
    except (OSError, ValueError, DatasetsError) as error:
        raise InvalidInput(
            f"{label}: cannot load it ({_first_line(error)}); check the name and --split, "
            "and that it is in the local HF cache when offline"
        ) from None
    finally:
        datasets.logging.set_verbosity(verbosity)


def _generation_problem(error: Exception) -> str:
    """Why `datasets` could not build the dataset; data files that disagree say how."""
    from datasets.table import CastError

    cause = error.__cause__
    if isinstance(cause, CastError):
        one, other = (
            ", ".join(map(name_text, names)) for names in (cause.table_column_names, cause.requested_column_names)
        )
        return (
            f"its data files do not share one set of columns (one has {one}; another {other}); "
            "give them the same columns, or ingest them one at a time"
        )
    return f"cannot load it ({_first_line(cause or error)}); its data files must share one set of columns and types"


def _first_line(error: BaseException) -> str:
    text = name_text(str(error).strip())
    return text.splitlines()[0] if text else type(error).__name__


def _saved_dataset(path: Path, split: str | None) -> RowSource:
    import datasets

    name = name_text(path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{name}: not a readable `datasets` save_to_disk folder ({_first_line(error)})") from None
    if split is not None and not isinstance(loaded, datasets.DatasetDict):
        raise InvalidInput(f"{name} holds one dataset, not splits; drop --split")
    dataset, split = _one_split(loaded, split, name)
    label = f"{name} (split {split})" if split else name
    location = name_text(path.resolve()) + (f"?split={split}" if split else "")
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
