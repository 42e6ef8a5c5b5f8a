"""Vectors of one embedder in LanceDB: table `embedder_<id>` under DIR/vectors, keyed by sample_id.

LanceDB is the record of which samples are embedded: each append commits atomically, so a
crash loses at most the batch being written and a rerun embeds exactly what is missing. A table
whose creation failed (disk full) is removed on the next open; LanceDB's disk and file errors
become one StorageError line naming the table's folder.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from catalog.errors import StorageError

ANN_METRIC = "cosine"
_DELETE_CHUNK = 10_000  # ids per delete predicate


class VectorTable:
    """The vectors of one embedder.

    Args:
        root: the catalog's vectors directory.
        embedder_id: the embedder's id in the catalog.
        dimension: vector width.
    """

    def __init__(self, root: Path, embedder_id: int, dimension: int) -> None:
        self.root = root
        self.name = f"embedder_{embedder_id}"
        self.dimension = dimension
        self._table = None

    @property
    def folder(self) -> Path:
        return self.root / f"{self.name}.lance"

    def _db(self):
        import lancedb

        return lancedb.connect(str(self.root))

    def _open(self, create: bool = False):
        """The LanceDB table (None when absent and not `create`).

        A folder without a committed version is what a failed first write leaves (disk full while
        the table was created): it holds no vectors, so it is removed and the table is made anew.
        """
        if self._table is None:
            with lance_errors(self.folder):
                if self.folder.exists() and not _committed(self.folder):
                    shutil.rmtree(self.folder)
                db = self._db()
                if self.name in db.list_tables().tables:
                    self._table = db.open_table(self.name)
                elif create:
                    self._table = self._create(db)
        return self._table

    def _create(self, db):
        schema = pa.schema(
            [pa.field("sample_id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), self.dimension))]
        )
        try:
            return db.create_table(self.name, schema=schema)
        except BaseException:
            if self.folder.exists() and not _committed(self.folder):
                shutil.rmtree(self.folder, ignore_errors=True)  # leave no half-created table behind
            raise

    def ids(self) -> np.ndarray:
        """sample_ids that have a vector (int64)."""
        table = self._open()
        if table is None:
            return np.empty(0, np.int64)
        with lance_errors(self.folder):
            return table.to_lance().to_table(columns=["sample_id"])["sample_id"].to_numpy()

    def add(self, sample_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append one batch (committed atomically)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self.dimension)
        table = self._open(create=True)
        with lance_errors(self.folder):
            table.add(pa.table({"sample_id": pa.array(sample_ids, pa.int64()), "vector": column}))

    def load(self, sample_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sample_ids, vectors[n, dimension]) sorted by sample_id; all of them, or those in `sample_ids`."""
        table = self._open()
        if table is None:
            return np.empty(0, np.int64), np.empty((0, self.dimension), np.float32)
        import pyarrow.compute as pc

        wanted = None if sample_ids is None else pc.field("sample_id").isin(pa.array(sample_ids, pa.int64()))
        with lance_errors(self.folder):
            data = table.to_lance().to_table(columns=["sample_id", "vector"], filter=wanted)
        ids = data["sample_id"].to_numpy()
        vectors = data["vector"].combine_chunks().flatten().to_numpy().reshape(len(ids), self.dimension)
        ids, first = np.unique(ids, return_index=True)  # sorted; a vector written twice counts once
        return ids, vectors[first]

    def delete(self, sample_ids: np.ndarray) -> None:
        """Delete the vectors of `sample_ids` for good: also from the table's older versions and the
        files only they used (a purge; a reader of an old version at that moment would fail)."""
        table = self._open()
        if table is None:
            return
        with lance_errors(self.folder):
            for start in range(0, len(sample_ids), _DELETE_CHUNK):
                listed = ", ".join(str(int(i)) for i in sample_ids[start : start + _DELETE_CHUNK])
                table.delete(f"sample_id IN ({listed})")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # it warns that older versions go: we want that
                table.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)

    def compact(self) -> None:
        """Merge the small fragments that batch appends leave behind."""
        table = self._open()
        if table is not None:
            with lance_errors(self.folder):
                table.optimize()

    def build_ann_index(self) -> None:
        """IVF_HNSW_SQ over cosine distance (replaces any earlier index)."""
        from lancedb.index import HnswSq

        table = self._open()
        config = HnswSq(distance_type=ANN_METRIC, num_partitions=_partitions(table.count_rows()))
        with lance_errors(self.folder):
            table.create_index("vector", config=config, replace=True)

    def has_ann_index(self) -> bool:
        table = self._open()
        return table is not None and any(index.index_type.startswith("IVF_HNSW") for index in table.list_indices())

    def search(self, queries: np.ndarray, k: int, refine_factor: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """ANN search: (query_index, sample_id) of up to k hits per query row, cosine distance refined exactly.

        Probes a quarter of the IVF partitions (at least 10): recall@1 1.0 on clustered vectors,
        lower on unstructured random ones (bench/neighbours_speed.py). LanceDB answers a single
        query vector without a query_index column: its hits are all query 0.
        """
        table = self._open()
        nprobes = max(10, _partitions(table.count_rows()) // 4)
        queries = np.asarray(queries, np.float32)
        hits = (
            table.search(list(queries) if len(queries) > 1 else queries[0])
            .distance_type(ANN_METRIC)
            .nprobes(nprobes)
            .ef(max(100, k * refine_factor))
            .refine_factor(refine_factor)
            .limit(k)
            .select(["sample_id", "_distance"])
            .to_arrow()
        )
        rows = hits["query_index"].to_numpy() if len(queries) > 1 else np.zeros(hits.num_rows, np.int32)
        return rows, hits["sample_id"].to_numpy()


def _committed(folder: Path) -> bool:
    """Whether a Lance table folder holds at least one committed version (a manifest)."""
    return any((folder / "_versions").glob("*.manifest"))


@contextmanager
def lance_errors(folder: Path) -> Iterator[None]:
    """Turn LanceDB's disk and file errors about `folder` into one StorageError line."""
    try:
        yield
    except OSError as error:
        raise StorageError(f"vector table {folder}: {error.strerror or error}; {_advice(str(error))}") from None
    except (RuntimeError, ValueError) as error:
        text = str(error)
        if "LanceError" not in text and "os error" not in text and "Not found" not in text:
            raise
        reason = _OS_ERROR.search(text)
        short = reason.group(0) if reason else text.splitlines()[0].split(", /")[0][:200]
        raise StorageError(f"vector table {folder}: {short}; {_advice(text)}") from None


_OS_ERROR = re.compile(r"[A-Z][^:()]*\(os error \d+\)")


def _advice(text: str) -> str:
    if "os error 28" in text or "os error 27" in text:
        return "free disk space and run the command again (a rerun continues where this one stopped)"
    if "os error 13" in text or "os error 30" in text or "os error 1)" in text:
        return "make the catalog folder writable, then run the command again"
    return "its files are damaged or missing: delete that folder, then `python cli.py embed` computes the vectors again"


def _partitions(rows: int) -> int:
    """IVF partitions for an index over `rows` vectors."""
    return max(1, int(np.sqrt(rows) / 4))
