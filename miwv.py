"""The Python face of the catalog: one object with a verb per pipeline stage.

    import miwv
    cat = miwv.open("my-catalog")
    cat.ingest("alpaca.jsonl", dataset="alpaca")  # replace=True: the dataset becomes exactly this file
    cat.embed()
    cat.score("smollm2-135m")
    top = cat.select("smollm2-135m", top_percent=1)
    top.write("top1.jsonl")

Methods take names (model alias or path, embedder name, dataset), never ids, and return small
result objects whose `as_dict()` is what the CLI's --json prints. Errors a caller can fix are
`miwv.UserError`s worded in the API's terms (`miwv.ArgumentError` names the arguments at fault).
Models load inside the methods that need them, so `import miwv` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog import DEFAULT_PATH, CatalogBusy, InvalidInput, UserError
from catalog import Catalog as _Store
from catalog.arguments import (
    INT32,
    any_text,
    at_most_one,
    checked,
    columns,
    device,
    embedder_ref,
    file_path,
    flag,
    metric_names,
    name_or_path,
    names_or_paths,
    number,
    one_of,
    optional,
    run_ids,
    selection_ref,
    source,
    text,
    whole,
)
from catalog.choices import (
    DEFAULT_EMBEDDER,
    DEFAULT_SCOPE,
    DTYPES,
    EXACT_LIMIT,
    EXPORT_FORMATS,
    EXPORT_SHAPES,
    EXPORT_TARGETS,
    NEIGHBOUR_METHODS,
    POOLINGS,
    RECORD_SHAPES,
    SCOPES,
    STRATEGIES,
)
from catalog.errors import ArgumentError
from catalog.ingest import IngestResult
from catalog.lifecycle import Removal
from catalog.query import MAX_TIMEOUT

if TYPE_CHECKING:
    import datasets
    import pandas
    import pyarrow as pa

    from scoring.embed import EmbedResult
    from scoring.neighbours import LinkResult
    from scoring.score import ScoreResult

__all__ = [
    "ArgumentError",
    "Catalog",
    "CatalogBusy",
    "Embedded",
    "Evaluated",
    "IngestResult",
    "InvalidInput",
    "Linked",
    "Removal",
    "Reported",
    "Scored",
    "Selection",
    "Trained",
    "Upgraded",
    "UserError",
    "models",
    "open",
]

# Checks shared by several verbs (catalog.arguments); each verb declares one per parameter.
_COUNT = whole(1)
_OPENING = dict(busy_timeout=optional(number(0)), auto_upgrade=flag)
_SEARCH = dict(method=one_of(NEIGHBOUR_METHODS), exact_limit=_COUNT, device=device)
_RAY = dict(workers=optional(_COUNT), ray_address=optional(any_text))
_SHAPE = dict(shape=optional(one_of(EXPORT_SHAPES)), with_scores=flag)
_EXPORT = dict(format=optional(one_of(EXPORT_FORMATS)), for_=optional(one_of(EXPORT_TARGETS)), **_SHAPE)
_SECONDS = number(0, MAX_TIMEOUT, above=True, wanted=f"a positive number of seconds, at most {MAX_TIMEOUT:g}")
_SCORES = dict(embedder=optional(embedder_ref), scorer_id=optional(_COUNT))
_SCOPE = one_of(SCOPES)


@checked(path=optional(file_path), **_OPENING)
def open(
    path: str | os.PathLike | None = None, busy_timeout: float | None = None, auto_upgrade: bool = True
) -> Catalog:
    """The catalog at `path` (default: env MIWV_CATALOG, else ./miwv-catalog); created by the first ingest.

    Args:
        busy_timeout: seconds to wait while another process writes (default: env MIWV_BUSY_TIMEOUT, else 10).
        auto_upgrade: let reads upgrade a catalog at an older schema revision (writes always do);
            with False a read of such a catalog is refused and the file is never changed.
    """
    return Catalog(
        path if path is not None else os.environ.get("MIWV_CATALOG", DEFAULT_PATH), busy_timeout, auto_upgrade
    )


def models() -> dict[str, list[dict[str, Any]]]:
    """Model aliases ("models") and embedder aliases ("embedders"): where their files come from, and
    where they are here (or why they are missing); embedders also with pooling, text prefix and
    whether they need code from the Hub. Never downloads."""
    from scoring.embed import describe_embedders
    from scoring.models import describe_aliases

    return {"models": describe_aliases(), "embedders": describe_embedders()}


def _plain(value: Any) -> Any:
    """JSON-ready: results as dicts, paths as strings, containers walked."""
    if isinstance(value, _AsDict):
        return value.as_dict()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


class _AsDict:
    def as_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready values (what the CLI's --json prints); fields with
        repr=False (a selection's member ids, its catalog handle) are left out."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.repr}


def _from(cls, result, **more: Any):
    """The library's `result` as the API's `cls`, field by field (`more`: the fields it lacks). The
    jobs' own result classes live beside torch code, so importing them here would slow `import miwv`."""
    return cls(**{f.name: getattr(result, f.name) for f in fields(cls) if f.name not in more}, **more)


@dataclass(frozen=True)
class Linked(_AsDict):
    """What a neighbour update did (scoring.neighbours.LinkResult)."""

    embedder: str
    mode: str  # "full", "incremental" or "up-to-date"
    method: str  # "exact" or "ann"
    samples: int
    new_samples: int
    changed: int  # links written
    without_neighbour: int
    seconds: float
    scope: str = DEFAULT_SCOPE  # catalog, or dataset: then the figures add up the datasets linked
    datasets: int = 0  # dataset scopes linked


@dataclass(frozen=True)
class Embedded(_AsDict):
    """What `embed` did: vectors written, then the neighbour update."""

    embedder: str
    pooling: str
    dimension: int
    embedded: int  # vectors written by this call
    total: int  # vectors the embedder now has
    seconds: float
    neighbours: Linked


@dataclass(frozen=True)
class Scored(_AsDict):
    """What `score` computed (scoring.score.ScoreResult)."""

    model: str
    scorer_id: int
    template: str
    max_length: int
    device: str
    pool: int  # samples in the pool
    not_linked: int  # pool samples without a neighbour link yet: run embed() first
    samples: int  # samples that needed a pass
    passes: int
    unscorable: int
    tokens_run: int
    seconds: float
    workers: int  # processes that computed (Ray workers, or 1 in-process)
    metrics: tuple[str, ...]  # what the run computed: miwv and/or ifd
    zero_shot_passes: int  # passes by kind (their sum is `passes`), unscorable ones included
    one_shot_passes: int
    response_passes: int  # the response alone (IFD's denominator)
    run_id: int | None  # its score_run row; None when nothing was pending
    pool_kind: str  # catalog, dataset, selection, where, or selection+where (a screened run)
    pool_selection_id: int | None  # the screen: the selection whose members were scored
    pool_where: str | None
    calibration: int  # samples of the calibration sample, scored whatever the screen kept
    scope: str = DEFAULT_SCOPE  # where the one-shot examples came from: catalog, or the pool's dataset
    examples: int = 1  # nearest examples per sample with a one-shot pass (MIWV@1..K)


@dataclass(frozen=True)
class Trained(_AsDict):
    """What `train` did (scoring.train.TrainResult)."""

    run_id: int
    selection_id: int
    model: str
    template: str
    method: str  # lora | full
    device: str
    samples: int  # examples trained on
    too_long: int  # members left out: longer than max_length with the trained suffix
    steps: int  # optimizer steps done
    final_loss: float | None  # the last logged training loss
    output_path: Path  # <catalog>/runs/<run_id>/final: the adapter or the model
    seconds: float
    resumed: bool  # continued an unfinished identical run from its last checkpoint
    already_finished: bool  # an identical run had finished: reported, not redone


@dataclass(frozen=True)
class Written(_AsDict):
    """Where a selection's samples were written (catalog.export.Exported)."""

    path: Path
    file_format: str  # jsonl, parquet, hf or llamafactory
    shape: str
    rows: int
    note: str | None  # why the trainer cannot build the scored prompt from this file, if it cannot


@dataclass(frozen=True)
class Reported(_AsDict):
    """The per-dataset MIWV summary of a model and the files written."""

    model: str
    scorer: str  # which scorer (and template) the losses come from
    summary: list[dict]  # one row per dataset, then "(all)"
    files: list[Path]
    ifd: dict | None = None  # IFD summary per dataset and MIWV-IFD agreement; None: no response losses
    cascades: list[dict] | None = None  # its screened selections and their estimated recall
    stability: dict | None = None  # MIWV@1 against MIWV@2 per dataset (score --examples 2+); None: no lists
    sizes: list[dict] = ()  # trained selections' reference loss per strategy and K (catalog.size_sweep)


@dataclass(frozen=True)
class Evaluated(_AsDict):
    """What `evaluate` did (scoring.evaluate.EvaluateResult): answers generated, reference losses, judgements."""

    runs: tuple[int, ...]  # the runs evaluated (a --base baseline included)
    testsets: tuple[str, ...]
    prompts: int
    new_prompts: int  # test prompts stored by this call
    settings: str  # generation settings (JSON), the key of the answers and judgements
    generated: int  # answers generated by this call (a rerun: only the missing ones)
    reference_file: str | None
    reference_losses: dict[int, float | None]  # run -> mean response NLL of the file's references
    judge: str | None
    asked: int  # questions put to the judge by this call (an unreadable answer is asked twice)
    unreadable: int  # (pair, prompt, order)s whose answer stayed unreadable: not stored, a rerun asks again
    pairs: list[dict]  # per pair (run_a < run_b): n, wins, ties, losses of run_a, winning_score
    seconds: float


@dataclass(frozen=True)
class Upgraded(_AsDict):
    """What `upgrade` did."""

    catalog: Path
    revision: str  # the schema revision the catalog is now at


@dataclass(frozen=True)
class Selection(_AsDict):
    """A recorded selection: the ranked sample ids and how they were chosen.

    Read the samples with to_arrow / to_pandas / to_hf, or write them with write(); `shape`
    is "alpaca" (instruction, input, output; the default when every sample has them) or
    "messages", and `with_scores` adds miwv, zero_shot_loss, one_shot_loss, neighbour_similarity.
    """

    selection_id: int
    strategy: str
    model: str | None
    embedder: str | None
    pool_size: int
    eligible: int  # pool samples the strategy can rank
    excluded: dict[str, int]  # pool samples it cannot, by reason
    selected: int
    sql: str  # the query that made it; runs unchanged with sql()
    output: Written | None  # what select(out=...) wrote
    # the screen the scores came through (score(pool=...)) and, from its calibration sample, the
    # estimated share of the model's top K% it kept: screen_selection_id, calibration_run_id,
    # calibration_samples, calibration_scored, top_percent, calibration_top, kept, recall, ci_low, ci_high
    cascade: dict[str, Any] | None
    sample_ids: list[int] = field(repr=False)  # ranked, best first
    scores: list[float | None] = field(repr=False)
    _store: _Store = field(repr=False, compare=False)
    _scorer_id: int | None = field(repr=False)
    _embedder_id: int | None = field(repr=False)
    _scope_dataset: str = field(default="", repr=False)

    def __len__(self) -> int:
        return self.selected

    @checked(**_SHAPE)
    def to_arrow(self, shape: str | None = None, with_scores: bool = False) -> pa.Table:
        """The selected samples in rank order, with their original extra fields."""
        from catalog.export import export_table

        return export_table(
            self._store, self.sample_ids, shape, with_scores, self._scorer_id, self._embedder_id, self._scope_dataset
        )

    @checked(**_SHAPE)
    def to_pandas(self, shape: str | None = None, with_scores: bool = False) -> pandas.DataFrame:
        return self.to_arrow(shape, with_scores).to_pandas()

    @checked(**_SHAPE)
    def to_hf(self, shape: str | None = None, with_scores: bool = False) -> datasets.Dataset:
        """A Hugging Face `datasets.Dataset`, in memory."""
        import datasets
        from datasets.table import InMemoryTable

        return datasets.Dataset(InMemoryTable(self.to_arrow(shape, with_scores)))

    @checked(path=file_path, **_EXPORT)
    def write(
        self,
        path: str | os.PathLike,
        format: str | None = None,
        shape: str | None = None,
        with_scores: bool = False,
        for_: str | None = None,
    ) -> Written:
        """Write the samples to `path` (replaced whole, never left half-written).

        Args:
            format: jsonl, parquet or hf (a `datasets.save_to_disk` folder); default from the name.
            for_: "llamafactory": `path` is a folder holding `<name>.jsonl` and its entry in
                `dataset_info.json`, ready for LLaMA-Factory's `dataset_dir`.
        """
        from catalog.export import export_samples

        at_most_one(format=format, for_=for_)
        exported = export_samples(
            self._store,
            self.sample_ids,
            path,
            for_ or format,
            shape,
            with_scores,
            self._scorer_id,
            self._embedder_id,
            self._scope_dataset,
        )
        return _from(Written, exported)


class Catalog:
    """A catalog directory; every method opens short connections, so a handle is cheap to keep."""

    @checked(path=file_path, **_OPENING)
    def __init__(self, path: str | os.PathLike, busy_timeout: float | None = None, auto_upgrade: bool = True) -> None:
        self._store = _Store(path, busy_timeout, auto_upgrade)

    @property
    def path(self) -> Path:
        return self._store.path

    def __repr__(self) -> str:
        return f"miwv.Catalog({str(self.path)!r})"

    @checked(
        source=source,
        dataset=optional(text),
        shape=optional(one_of(RECORD_SHAPES)),
        skip_invalid=flag,
        columns=optional(columns),
        split=optional(text),
        replace=flag,
    )
    def ingest(
        self,
        source: str | os.PathLike | Any,
        dataset: str | None = None,
        *,
        shape: str | None = None,
        skip_invalid: bool = False,
        columns: dict[str, str] | None = None,
        split: str | None = None,
        replace: bool = False,
    ) -> IngestResult:
        """Add samples: a file (.jsonl, .json, .parquet, .csv, gzipped text), a `datasets`
        save_to_disk folder, a folder of Parquet shards, "hf:ORG/NAME" (datasets.load_dataset),
        or rows in memory (a list of dicts, pandas.DataFrame, pyarrow.Table or datasets.Dataset).
        All or nothing.

        Args:
            dataset: the dataset the rows belong to (a file's default: its name up to the first dot).
            shape: "alpaca", "sharegpt" or "openai" (default: detected from the first record).
            skip_invalid: ingest the valid rows and record the others in the `rejects` view.
            columns: {shape field: your column}, e.g. {"output": "response"}.
            split: the split of a datasets folder, a folder of shards or an hf: dataset.
            replace: the dataset's members become exactly the source's rows: the others leave it
                (a sample in no other dataset is retired); rows that stay keep their ids, vectors
                and scores. The result's rows_out, samples_retired and links_to_repair say what left.
        """
        if not isinstance(source, str | os.PathLike) and dataset is None:
            raise ArgumentError("{0} is required when ingesting rows from memory", "dataset")
        self._finish_purges()
        if isinstance(source, str | os.PathLike):
            from catalog.ingest import ingest_file

            return ingest_file(self._store, source, dataset, shape, skip_invalid, columns, split, replace)
        from catalog.ingest import ingest_rows

        return ingest_rows(
            self._store, source, dataset, shape=shape, skip_invalid=skip_invalid, columns=columns, replace=replace
        )

    @checked(
        dataset=optional(text),
        where=optional(any_text),
        ids=optional(file_path),
        everything=flag,
        purge=flag,
        dry_run=flag,
    )
    def remove(
        self,
        dataset: str | None = None,
        where: str | None = None,
        ids: str | os.PathLike | None = None,
        *,
        everything: bool = False,
        purge: bool = False,
        dry_run: bool = False,
    ) -> Removal:
        """Take samples out of datasets, in one transaction. A sample left in no dataset is retired:
        out of the `samples` view, neighbour search, scoring and selection (its text, vectors and
        losses stay until a purge). Nothing matching is not an error: the result's `message` says so.

        Args:
            dataset: remove all of this dataset's members, or (with `where` / `ids`) only those of it.
            where: an SQL condition on the `samples` view, run read-only as `sql()` runs queries.
            ids: a text file of sample_ids, one per line (# comments and blank lines skipped).
            everything: remove every sample; required when the selectors would match them all.
            purge: also delete every retired sample for good (text, vectors, losses, links); alone,
                it purges the samples retired earlier. Selections keep their ids, marked purged.
            dry_run: say what would change and write nothing.
        """
        from catalog.lifecycle import remove

        return remove(
            self._store,
            dataset=dataset,
            where=where,
            ids=ids,
            everything=everything,
            purge=purge,
            dry_run=dry_run,
        )

    @checked(dataset=optional(text))
    def history(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """Every version of `dataset` (default: of every dataset), oldest first: the change that
        made it (ingest, replace, remove, purge), rows in and out, and the members after it."""
        from catalog.lifecycle import history

        return history(self._store, dataset)

    def _finish_purges(self) -> None:
        """Finish the vector deletion of a purge stopped after its DuckDB transaction (every write
        verb does this first). It takes the job lock, so it runs before the verb takes its own."""
        from catalog.lifecycle import finish_purges

        finish_purges(self._store)

    @checked(embedder=name_or_path, pooling=one_of(POOLINGS), batch_size=_COUNT, scope=_SCOPE, **_SEARCH, **_RAY)
    def embed(
        self,
        embedder: str = DEFAULT_EMBEDDER,
        *,
        pooling: str = "mean",
        device: str = "auto",
        batch_size: int = 16,
        method: str = "auto",
        exact_limit: int = EXACT_LIMIT,
        scope: str = DEFAULT_SCOPE,
        workers: int | None = None,
        ray_address: str | None = None,
    ) -> Embedded:
        """Embed the samples that lack a vector from `embedder`, then update neighbour links.

        Args:
            embedder: an alias (minilm) or a local sentence-transformers / HF model folder.
            pooling: mean (the paper's), cls or max.
            method, exact_limit, scope: how and where neighbours are searched (see neighbours()).
            device: where embedding and the exact neighbour search run (auto: CUDA when present).
            workers, ray_address: embed on Ray workers on this machine, or on the cluster at
                `ray_address` ("auto"); neither: in-process.
        """
        from scoring.embed import embed_missing

        self._finish_purges()
        result: EmbedResult = embed_missing(self._store, embedder, pooling, device, batch_size, workers, ray_address)
        linked = self._link(result.embedder, False, method, exact_limit, device, scope, None)
        row = result.embedder
        return Embedded(row.name, row.pooling, row.dimension, result.embedded, result.total, result.seconds, linked)

    @checked(embedder=optional(embedder_ref), rebuild=flag, scope=_SCOPE, dataset=optional(text), **_SEARCH)
    def neighbours(
        self,
        embedder: str | None = None,
        *,
        rebuild: bool = False,
        method: str = "auto",
        exact_limit: int = EXACT_LIMIT,
        device: str = "auto",
        scope: str = DEFAULT_SCOPE,
        dataset: str | None = None,
    ) -> Linked:
        """Bring `embedder`'s nearest-neighbour links up to date (or recompute them: rebuild=True).

        Args:
            embedder: name, path or id (default: minilm with mean pooling, or the only one).
            method: "exact", "ann" (LanceDB index, re-ranked exactly) or "auto" (exact up to
                `exact_limit` samples).
            device: where the exact search runs (auto: CUDA when present); links are the same anywhere.
            scope: "catalog" (a sample's example is its nearest other sample in the catalog) or "dataset"
                (its nearest other member of each dataset it is in: one link per dataset; the paper's setting).
            dataset: with scope="dataset", link this dataset only (default: every dataset).
        """
        from catalog.embed import find_embedder

        self._finish_purges()
        return self._link(find_embedder(self._store, embedder), rebuild, method, exact_limit, device, scope, dataset)

    def _link(
        self, embedder, rebuild: bool, method: str, exact_limit: int, device: str, scope: str, dataset: str | None
    ) -> Linked:
        from scoring.neighbours import link_neighbours

        result: LinkResult = link_neighbours(
            self._store, embedder, rebuild, method, exact_limit, device, scope=scope, dataset=dataset
        )
        return _from(Linked, result)

    @checked(
        model=name_or_path,
        embedder=optional(embedder_ref),
        template=optional(name_or_path),
        max_length=optional(whole(8)),
        device=device,
        dtype=optional(one_of(DTYPES)),
        dataset=optional(text),
        limit=optional(_COUNT),
        token_budget=optional(_COUNT),
        max_batch=optional(_COUNT),
        gpus_per_worker=_COUNT,
        metrics=metric_names,
        pool=optional(selection_ref),
        where=optional(any_text),
        calibrate=optional(number(0, 100, above=True)),
        seed=whole(*INT32),
        scope=_SCOPE,
        examples=_COUNT,
        **_RAY,
    )
    def score(
        self,
        model: str,
        *,
        embedder: str | None = None,
        template: str | None = None,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str | None = None,
        dataset: str | None = None,
        limit: int | None = None,
        token_budget: int | None = None,
        max_batch: int | None = None,
        workers: int | None = None,
        ray_address: str | None = None,
        gpus_per_worker: int = 1,
        metrics: str | Sequence[str] = "miwv",
        pool: str | None = None,
        where: str | None = None,
        calibrate: float | None = None,
        seed: int = 0,
        scope: str = DEFAULT_SCOPE,
        examples: int = 1,
    ) -> Scored:
        """Compute the missing losses of `model` (alias, HF folder or .gguf) for `metrics` over the pool.

        Args:
            embedder: whose neighbours are the one-shot examples.
            template: "chat", "alpaca" (Stanford), "alpaca-lf" (LLaMA-Factory) or a .jinja file: the
                prompt you will train with (default: chat when the tokenizer has a template).
            dataset, limit: the pool: the whole catalog or one dataset; its first `limit` samples by id.
            device, dtype, max_length, token_budget, max_batch: see `python cli.py score --help`.
            workers, ray_address, gpus_per_worker: score on Ray workers (see README "Scaling out").
            metrics: "miwv" (zero- and one-shot passes), "ifd" (zero-shot and response-alone passes:
                IFD and Superfiltering), or both ("miwv,ifd" or a list).
            pool, where: score only a screen's samples: "selection:ID" (the current members of a
                recorded selection) and/or an SQL condition on the `samples` view (within `dataset`).
            calibrate, seed: with a screen, also score a seeded random `calibrate`% of the full pool
                (the catalog, or `dataset`); select() then estimates what share of this model's top
                K% the screen kept (Selection.cascade).
            scope: where one-shot examples come from: "catalog" or "dataset" (each sample's nearest other
                member of `dataset`, which is then required; run neighbours(scope="dataset") first).
            examples: K > 1 also scores each sample with its 2nd..K-th nearest example (MIWV@k): the
                stability figures of report() and strategy="miwv-mean".
        """
        from catalog.pools import resolve_pool
        from scoring.score import score_catalog

        screen = resolve_pool(self._store, dataset, pool, where, calibrate, seed)  # its errors come before any write
        self._finish_purges()
        result: ScoreResult = score_catalog(
            self._store,
            model,
            embedder=embedder,
            template=template,
            max_length=max_length,
            device=device,
            dtype=dtype,
            dataset=dataset,
            limit=limit,
            token_budget=token_budget,
            max_batch=max_batch,
            workers=workers,
            ray_address=ray_address,
            gpus_per_worker=gpus_per_worker,
            metrics=metrics,
            pool=screen,
            scope=scope,
            examples=examples,
        )
        kind = "+".join(name for name, given in (("selection", pool), ("where", where)) if given is not None)
        return _from(
            Scored,
            result,
            pool_kind=kind or ("dataset" if dataset is not None else "catalog"),
            pool_selection_id=pool,
            pool_where=where,
            calibration=len(screen.calibration_ids) if screen else 0,
        )

    @checked(
        selection=_COUNT,
        model=name_or_path,
        template=optional(name_or_path),
        full=flag,
        epochs=number(0, above=True),
        lr=number(0, 1, above=True),
        batch_size=_COUNT,
        gradient_accumulation=_COUNT,
        max_length=optional(whole(8)),
        max_steps=optional(_COUNT),
        warmup_ratio=number(0, 1, above=False, wanted="a fraction from 0 to 1"),
        lora_r=_COUNT,
        lora_alpha=number(0, above=True),
        lora_dropout=number(0, 1, wanted="a fraction from 0 to 1"),
        lora_targets=text,
        seed=whole(*INT32),
        save_steps=_COUNT,
    )
    def train(
        self,
        selection: int,
        model: str,
        *,
        template: str | None = None,
        full: bool = False,
        epochs: float = 3.0,
        lr: float = 2e-5,
        batch_size: int = 4,
        gradient_accumulation: int = 32,
        max_length: int | None = None,
        max_steps: int | None = None,
        warmup_ratio: float = 0.03,
        lora_r: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.05,
        lora_targets: str = "all-linear",
        seed: int = 0,
        save_steps: int = 10,
    ) -> Trained:
        """Fine-tune `model` on recorded selection `selection`'s current members, rendered with the
        template the scorer used (the scoring prompt id for id; loss on the response and what the
        template's trainer trains after it). Run again with the same arguments to resume a stopped
        run from its last checkpoint; a finished identical run is reported, not redone.

        Args:
            template: "chat", "alpaca", "alpaca-lf" or a .jinja file (default: chat when the tokenizer has one).
            full: fine-tune every weight (default: a LoRA adapter).
            epochs, lr, batch_size, gradient_accumulation, max_length, warmup_ratio: the defaults are
                Stanford Alpaca's recipe (3 epochs, 2e-5, effective batch 4 x 32 = 128, 3% warmup, cosine);
                max_length defaults to the scorer's (the model's context, at most 4096).
            max_steps: stop after this many optimizer steps.
            lora_r, lora_alpha, lora_dropout, lora_targets: the adapter ("all-linear", or module names
                comma-separated).
            seed: model init, data order and dropout.
            save_steps: a checkpoint every this many optimizer steps (what a kill can lose).
        """
        from scoring.train import Settings, train_selection

        settings = Settings(
            "full" if full else "lora",
            epochs,
            lr,
            batch_size,
            gradient_accumulation,
            max_length,
            max_steps,
            warmup_ratio,
            lora_r,
            lora_alpha,
            lora_dropout,
            lora_targets,
        )
        self._finish_purges()
        result = train_selection(self._store, selection, model, template, settings, seed, save_steps)
        return _from(Trained, result)

    @checked(
        model=optional(name_or_path),
        top_k=optional(_COUNT),
        top_percent=optional(number(0, 100, above=True)),
        strategy=one_of(STRATEGIES),
        dataset=optional(text),
        where=optional(any_text),
        seed=whole(*INT32),
        out=optional(file_path),
        scope=_SCOPE,
        min_similarity=optional(number(-1, 1)),
        **_SCORES,
        **_EXPORT,
    )
    def select(
        self,
        model: str | None = None,
        *,
        top_k: int | None = None,
        top_percent: float | None = None,
        strategy: str = "miwv",
        dataset: str | None = None,
        where: str | None = None,
        seed: int = 0,
        embedder: str | None = None,
        scorer_id: int | None = None,
        out: str | os.PathLike | None = None,
        format: str | None = None,
        shape: str | None = None,
        with_scores: bool = False,
        for_: str | None = None,
        scope: str = DEFAULT_SCOPE,
        min_similarity: float | None = None,
    ) -> Selection:
        """Select the top K (top_k) or K% of the pool size (top_percent) and record the selection.

        Args:
            model: whose scores rank the pool (not needed for strategy="random").
            strategy: miwv (highest first), low-miwv, zero-shot-loss, one-shot-loss, ifd (Cherry LLM: IFD
                at most 1, highest first), superfilter (Superfiltering: ifd_ppl below 1, highest first; both
                need score(metrics="ifd")) or random (by `seed`).
            dataset, where: the pool: one dataset and/or an SQL condition on the `samples` view.
            embedder: whose neighbours the scores used (default: minilm, or the only one).
            scorer_id: which of `model`'s scorers (default: its newest; see status()["scores"]).
            out, format, shape, with_scores, for_: also write the samples there, as Selection.write();
                the output is recorded with the selection.
            scope: whose examples' scores rank: "catalog" or "dataset" (`dataset`'s own examples; needs
                `dataset` and score(scope="dataset")). strategy="miwv-mean" ranks on the mean MIWV over a
                sample's K examples (score(examples=K)).
            min_similarity: drop samples whose one-shot example's cosine similarity is below it.
        """
        from catalog.select import Request, select

        at_most_one(format=format, for_=for_)
        scorer, links = self._scores_for(model, scorer_id, embedder, strategy)
        request = Request(
            strategy,
            top_k,
            top_percent,
            dataset,
            where,
            seed,
            scorer.scorer_id if scorer else None,
            links.embedder_id if links else None,
            scope,
            min_similarity,
        )
        chosen, exported = select(self._store, request, out, format, shape, with_scores, for_)
        return Selection(
            chosen.selection_id,
            strategy,
            scorer.model if scorer else None,
            links.name if links else None,
            chosen.pool_size,
            chosen.eligible,
            chosen.excluded,
            len(chosen.sample_ids),
            chosen.sql,
            _from(Written, exported) if exported else None,
            chosen.cascade,
            chosen.sample_ids,
            chosen.scores,
            self._store,
            request.scorer_id,
            request.embedder_id,
            request.scope_dataset,
        )

    def _scores_for(self, model: str | None, scorer_id: int | None, embedder: str | None, strategy: str):
        """The scorer and embedder rows that `model`, `scorer_id` and `embedder` name; (None, None) without
        a model. IFD strategies read no neighbours: their embedder is None."""
        from catalog.embed import find_embedder
        from catalog.score import find_scorer

        if model is None:
            if strategy != "random":
                raise ArgumentError(
                    "{0} is required (whose scores rank the pool) except for the random strategy", "model"
                )
            return None, None
        scorer = find_scorer(self._store, model, scorer_id)
        return scorer, find_embedder(self._store, embedder) if STRATEGIES[strategy].needs_embedder else None

    def selections(self) -> list[dict[str, Any]]:
        """Every recorded selection, newest first (their members: the selection_member table)."""
        from catalog.select import list_selections

        return list_selections(self._store)

    @checked(model=name_or_path, out=file_path, scope=_SCOPE, **_SCORES)
    def report(
        self,
        model: str,
        out: str | os.PathLike = "report",
        *,
        embedder: str | None = None,
        scorer_id: int | None = None,
        scope: str = DEFAULT_SCOPE,
    ) -> Reported:
        """Write summary.md, miwv_histogram.png and losses.png for `model` to the folder `out`; with
        scope="dataset", each dataset's figures use its own examples. With score(examples=2) or more,
        Reported.stability says how much MIWV depends on which example was found."""
        from catalog.report import write_report

        scorer, links = self._scores_for(model, scorer_id, embedder, "miwv")
        result = write_report(self._store, scorer.scorer_id, links.embedder_id, model, out, scope)
        return Reported(
            model,
            result.scorer,
            result.summary,
            result.files,
            result.ifd,
            result.cascades,
            result.stability,
            list(result.sizes),
        )

    @checked(
        runs=optional(run_ids),
        testset=optional(names_or_paths),
        reference_loss=optional(file_path),
        judge=optional(text),
        judge_url=optional(text),
        judge_key_env=text,
        base=optional(name_or_path),
        template=optional(name_or_path),
        max_new_tokens=whole(1, 4096),
        sample=flag,
        temperature=number(0, above=True),
        top_p=number(0, 1, above=True),
        seed=whole(*INT32),
        batch_size=_COUNT,
        device=device,
    )
    def evaluate(
        self,
        runs: list[int] | str | None = None,
        *,
        testset: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        reference_loss: str | os.PathLike | None = None,
        judge: str | None = None,
        judge_url: str | None = None,
        judge_key_env: str = "OPENAI_API_KEY",
        base: str | None = None,
        template: str | None = None,
        max_new_tokens: int = 256,
        sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        batch_size: int = 8,
        device: str = "auto",
    ) -> Evaluated:
        """Evaluate training runs: answer test prompts, score reference answers, judge every pair.

        Args:
            runs: train_run ids ([3, 4] or "3,4").
            testset: "vicuna" or a JSONL file of prompts (instruction/prompt/text, optional input), or a
                list of them: each run answers every prompt (stored; a rerun generates only what is missing).
            reference_loss: a JSONL file of prompts with reference answers (output/reference): each run's
                mean response NLL on them; refused when it shares a sample with a run's selection.
            judge: "local:MODEL" (an alias, folder or .gguf) or "openai:MODEL" (served at `judge_url`):
                judges every pair of runs on every prompt in both orders under Cherry LLM's prompt; nothing
                is asked twice. An answer that is not Cherry's score line is asked once more, then left out
                and counted (`unreadable`).
            judge_url: an OpenAI-compatible API base (http://127.0.0.1:8000/v1), checked before any model
                loads; judge_key_env: the environment variable holding its key (unset: no key is sent).
            base, template: also evaluate the base MODEL itself (no fine-tuning) under `template`, as a
                baseline run of method "base" (recorded once).
            max_new_tokens, sample, temperature, top_p, seed: greedy (default) or seeded sampling.
            batch_size: prompts per generation batch (left-padded); device: where models run.
        """
        from scoring.evaluate import evaluate_catalog
        from scoring.generate import Settings

        result = evaluate_catalog(
            self._store,
            runs or [],
            base=base,
            template=template,
            testsets=testset or [],
            reference_file=None if reference_loss is None else str(reference_loss),
            judge=judge,
            judge_url=judge_url,
            judge_key_env=judge_key_env,
            settings=Settings(max_new_tokens, sample, temperature, top_p, seed),
            device=device,
            batch_rows=batch_size,
        )
        return _from(Evaluated, result)

    def experiments(self) -> list[dict[str, Any]]:
        """Every training run with its metrics (final train loss, mean reference loss per test set,
        winning score against each other run) and, for runs that differ only in seed, mean and spread."""
        from catalog.experiments import experiments

        return experiments(self._store)

    @checked(query=text, timeout=optional(_SECONDS))
    def sql(self, query: str, timeout: float | None = None) -> pa.Table:
        """Run one read-only statement over the public views (samples, neighbours, miwv_scores, ...);
        it can read and write no other file. `timeout`: stop it after that many seconds."""
        from catalog.query import run_query

        return run_query(self._store, query, timeout)

    def status(self) -> dict[str, Any]:
        """Samples per dataset, ingest batches, embedders and scores (what `status --json` prints)."""
        from catalog.status import catalog_status

        return catalog_status(self._store)

    @checked(host=text, port=whole(1, 65535))
    def serve(self, host: str = "127.0.0.1", port: int = 8765) -> None:
        """Serve the read-only web explorer at http://host:port until interrupted (see README)."""
        from web.app import serve

        serve(self._store, host, port)

    def upgrade(self) -> Upgraded:
        """Apply pending schema migrations (opening a catalog does this too)."""
        return Upgraded(self.path, self._store.upgrade())
