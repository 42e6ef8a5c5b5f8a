"""miwv: pick the instruction-tuning data a model is weakest on, by MIWV, from an SQL catalog.

Each command parses its arguments, calls the Python API (miwv.py) and prints its result:
for people, or with --json as one JSON object (the result's as_dict()) for scripts.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

import click

import miwv
from catalog import DEFAULT_PATH
from catalog.choices import (
    DEFAULT_EMBEDDER,
    DEFAULT_SCOPE,
    DEVICE_HELP,
    DTYPES,
    EXACT_LIMIT,
    EXPORT_FORMATS,
    EXPORT_SHAPES,
    EXPORT_TARGETS,
    METRICS,
    NEIGHBOUR_METHODS,
    POOLINGS,
    RECORD_SHAPES,
    SCOPES,
    STRATEGIES,
    TEMPLATES,
)
from catalog.errors import StorageError

# Commands that only read the catalog: they never change its file (an old schema is refused, not upgraded).
READ_COMMANDS = ("status", "sql", "selections", "report", "serve", "history")


class Cli(click.Group):
    """Turns user errors and operating-system errors into one line on stderr and an exit code,
    and Ctrl-C into a resumable stop. Every command also takes --catalog after its name
    (`serve --port 9000 --catalog other`), where it wins over the one before it."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.append(
            click.Option(
                ["--catalog"],
                type=click.Path(file_okay=False),
                expose_value=False,
                callback=_open_here,
                help="Catalog directory (same as --catalog before the command).",
            )
        )
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except miwv.ArgumentError as error:
            echo_error(error.worded(_flag_namer(self.get_command(ctx, ctx.invoked_subcommand))))
            ctx.exit(error.exit_code)
        except miwv.UserError as error:
            echo_error(str(error))
            ctx.exit(error.exit_code)
        except OSError as error:
            echo_error(os_error_line(error))
            ctx.exit(StorageError.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted. Work committed so far is kept; run the command again to continue.", err=True)
            ctx.exit(130)


def echo_error(text: str) -> None:
    """The one error line on stderr; names from the catalog or a file in it are shown, not obeyed."""
    from terminal.render import visible

    click.echo(f"Error: {visible(text)}", err=True)


def _open_here(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """A command's own --catalog replaces the catalog its group opened."""
    if value is not None:
        ctx.obj = miwv.open(value, auto_upgrade=ctx.info_name not in READ_COMMANDS)


def os_error_line(error: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and what to do."""
    where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
    problem = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        advice = "free disk space and run the command again"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "make it writable (or readable), or choose another path"
    else:
        advice = "check the path and run the command again"
    return f"{problem}" + (f": {where}" if where else "") + f"; {advice}"


def column_map(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, str] | None:
    """--columns instruction=prompt,output=completion -> {"instruction": "prompt", "output": "completion"}."""
    if value is None:
        return None
    pairs = [item.partition("=") for item in value.split(",") if item.strip()]
    if not pairs or any(not target.strip() or not sep or not source.strip() for target, sep, source in pairs):
        raise click.BadParameter("expected TARGET=FIELD pairs separated by commas, e.g. instruction=prompt")
    return {target.strip(): source.strip() for target, _, source in pairs}


def _flag_namer(command: click.Command | None) -> Callable[[str], str]:
    """API argument name -> the command's flag for it ("top_k" -> "--top-k"), else the name itself."""
    options = [p for p in (command.params if command else []) if isinstance(p, click.Option)]
    flags = {p.opts[0].lstrip("-").replace("-", "_"): p.opts[0] for p in options}  # "format": select's --format
    flags |= {p.name: p.opts[0] for p in options}
    return lambda name: flags.get(name, name)


def json_option(command):
    """--json: print the result as one JSON object, the fields of its as_dict()."""
    return click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")(command)


def emit(result: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """The result as JSON (its as_dict()) or through its human printer from terminal.render."""
    from terminal.render import print_json

    print_json(result.as_dict()) if as_json else human(result)


@click.group(cls=Cli)
@click.option(
    "--catalog",
    "catalog_path",
    envvar="MIWV_CATALOG",
    default=DEFAULT_PATH,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Catalog directory (env MIWV_CATALOG).",
)
@click.pass_context
def cli(ctx: click.Context, catalog_path: str) -> None:
    """SQL-backed, incremental MIWV data selection."""
    ctx.obj = miwv.open(catalog_path, auto_upgrade=ctx.invoked_subcommand not in READ_COMMANDS)


@cli.command()
@click.argument("path")
@click.option("--dataset", help="Dataset the rows belong to (default: the file or folder name without extensions).")
@click.option(
    "--format",
    "shape",
    type=click.Choice(RECORD_SHAPES),
    help="Record shape (default: detected from the first record).",
)
@click.option("--skip-invalid", is_flag=True, help="Ingest the valid rows; record invalid ones in the `rejects` view.")
@click.option(
    "--columns",
    callback=column_map,
    help="Rename fields first: TARGET=FIELD,... with targets instruction, input, output, system, history, "
    "conversations, messages.",
)
@click.option("--split", help="Split of a datasets folder, a folder of shards or an hf: dataset.")
@click.option(
    "--replace",
    is_flag=True,
    help="Make --dataset exactly PATH's rows: members PATH no longer holds leave it (a sample in no other "
    "dataset is retired); rows that stay keep their vectors and scores.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def ingest(
    catalog: miwv.Catalog,
    path: str,
    dataset: str | None,
    shape: str | None,
    skip_invalid: bool,
    columns: dict[str, str] | None,
    split: str | None,
    replace: bool,
    as_json: bool,
) -> None:
    """Add the samples of PATH to the catalog: a .jsonl, .json, .parquet or .csv file (text
    formats may be .gz), a `datasets` save_to_disk folder, a folder of Parquet shards, or
    hf:ORG/NAME (datasets.load_dataset: the local HF cache offline, the Hub online).

    PATH is ingested whole or not at all. Samples already in the catalog (same content)
    are not added again; their membership in --dataset is recorded. With --replace the dataset
    becomes a new version holding exactly PATH's rows (see `history`).
    """
    from terminal.render import print_ingested

    result = catalog.ingest(
        path, dataset, shape=shape, skip_invalid=skip_invalid, columns=columns, split=split, replace=replace
    )
    emit(result, as_json, print_ingested)


@cli.command()
@click.option("--dataset", help="Remove this dataset's members (with --where or --ids: only those of it).")
@click.option("--where", help="Remove the samples matching this SQL condition on the `samples` view.")
@click.option("--ids", metavar="FILE", help="Remove the samples listed in FILE, one sample_id per line.")
@click.option("--all", "everything", is_flag=True, help="Remove every sample (needed when the others match them all).")
@click.option(
    "--purge",
    is_flag=True,
    help="Then delete every retired sample for good: text, vectors, losses (alone: those retired earlier).",
)
@click.option("--dry-run", is_flag=True, help="Print what would change and write nothing.")
@json_option
@click.pass_obj
def remove(
    catalog: miwv.Catalog,
    dataset: str | None,
    where: str | None,
    ids: str | None,
    everything: bool,
    purge: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Take samples out of datasets, all or nothing. A sample left in no dataset is retired: it
    leaves `samples`, neighbour search, scoring and selection, and the samples whose nearest
    neighbour it was get a new one at the next `embed`. Try --dry-run first."""
    from terminal.changes import print_removal

    result = catalog.remove(dataset, where, ids, everything=everything, purge=purge, dry_run=dry_run)
    emit(result, as_json, print_removal)


@cli.command()
@click.option("--dataset", help="Only this dataset's versions.")
@json_option
@click.pass_obj
def history(catalog: miwv.Catalog, dataset: str | None, as_json: bool) -> None:
    """List dataset versions, oldest first: each ingest, replace or removal, with rows in and out."""
    from terminal.changes import print_history
    from terminal.render import print_json

    rows = catalog.history(dataset)
    if as_json:
        print_json({"history": rows})
    else:
        print_history(rows, dataset)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_obj
def status(catalog: miwv.Catalog, as_json: bool) -> None:
    """Show samples per dataset, ingest batches, embeddings, neighbours and scores."""
    from terminal.render import print_json, print_status

    result = catalog.status()
    if as_json:
        print_json(result)
        return
    print_status(result)


@cli.command(context_settings={"ignore_unknown_options": True})  # a query may start with an SQL comment: "-- ..."
@click.argument("query")
@click.option("--csv", "output", flag_value="csv", help="Print CSV.")
@click.option("--json", "output", flag_value="json", help="Print one JSON object per row.")
@click.option("--timeout", type=float, help="Stop the query after this many seconds.")
@click.pass_obj
def sql(catalog: miwv.Catalog, query: str, output: str | None, timeout: float | None) -> None:
    """Run one read-only QUERY against the catalog (views: samples, rejects, neighbours, miwv_scores).

    The query reads only the catalog: no other file can be read or written."""
    from terminal.render import print_arrow

    print_arrow(catalog.sql(query, timeout), output or "table")


def neighbour_search_options(command):
    """--method and --exact-limit, shared by `embed` and `neighbours`."""
    command = click.option(
        "--exact-limit",
        type=int,
        default=EXACT_LIMIT,
        show_default=True,
        help="Largest catalog searched exactly under --method auto.",
    )(command)
    return click.option(
        "--method",
        type=click.Choice(NEIGHBOUR_METHODS),
        default="auto",
        show_default=True,
        help="Neighbour search: exact blocked products, LanceDB ANN (IVF_HNSW_SQ, re-ranked "
        "exactly), or exact up to --exact-limit samples.",
    )(command)


def scope_option(help_more: str):
    """--scope, shared by `embed`, `neighbours`, `score`, `select` and `report`."""
    return click.option(
        "--scope",
        type=click.Choice(SCOPES),
        default=DEFAULT_SCOPE,
        show_default=True,
        help="Where each sample's one-shot example is searched: the whole catalog, or each dataset it belongs "
        "to (the paper's setting). " + help_more,
    )


def ray_options(command):
    """--workers and --ray-address, shared by `embed` and `score`: without them, Ray is not used."""
    command = click.option(
        "--ray-address",
        help="Run on the Ray cluster at this address ('auto': the one this machine joined), one worker per GPU.",
    )(command)
    return click.option(
        "--workers",
        type=int,
        help="Run on N Ray workers started on this machine (one per GPU when there are GPUs).",
    )(command)


@cli.command()
@click.option(
    "--embedder",
    default=DEFAULT_EMBEDDER,
    show_default=True,
    help="Alias (minilm, bge-large, e5-large, gte-base: see `models`), a Hugging Face id (Org/Name: from the HF "
    "cache, downloaded when missing unless HF_HUB_OFFLINE=1) or a local sentence-transformers / HF model folder.",
)
@click.option(
    "--pooling",
    type=click.Choice(POOLINGS),
    default="mean",
    show_default=True,
    help="Token pooling, recorded with the vectors (mean as in the paper, whatever the model's default).",
)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--batch-size", type=int, default=16, show_default=True)
@neighbour_search_options
@scope_option("With dataset, every dataset's links are brought up to date.")
@ray_options
@json_option
@click.pass_obj
def embed(
    catalog: miwv.Catalog,
    embedder: str,
    pooling: str,
    device: str,
    batch_size: int,
    method: str,
    exact_limit: int,
    scope: str,
    workers: int | None,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """Embed samples that lack a vector, then update nearest-neighbour links.

    Only new samples are embedded; old samples get a new neighbour only where a new one is nearer.
    """
    from terminal.render import print_embedded

    result = catalog.embed(
        embedder,
        pooling=pooling,
        device=device,
        batch_size=batch_size,
        method=method,
        exact_limit=exact_limit,
        scope=scope,
        workers=workers,
        ray_address=ray_address,
    )
    emit(result, as_json, print_embedded)


@cli.command()
@click.option("--embedder", help="Embedder name, path or id (default: minilm, or the only one).")
@click.option("--rebuild", is_flag=True, help="Recompute every link from scratch (writes only those that differ).")
@neighbour_search_options
@click.option("--device", default="auto", show_default=True, help="Where the exact search runs: " + DEVICE_HELP)
@scope_option("With dataset, every dataset's links, or --dataset's.")
@click.option("--dataset", help="With --scope dataset: link this dataset's members only.")
@json_option
@click.pass_obj
def neighbours(
    catalog: miwv.Catalog,
    embedder: str | None,
    rebuild: bool,
    method: str,
    exact_limit: int,
    device: str,
    scope: str,
    dataset: str | None,
    as_json: bool,
) -> None:
    """Update (or --rebuild) nearest-neighbour links of embedded samples."""
    from terminal.render import print_linked

    result = catalog.neighbours(
        embedder, rebuild=rebuild, method=method, exact_limit=exact_limit, device=device, scope=scope, dataset=dataset
    )
    emit(result, as_json, print_linked)


@cli.command()
@click.option(
    "--model",
    required=True,
    help="Alias (see `models`), a Hugging Face id (Org/Name; downloaded unless HF_HUB_OFFLINE=1), "
    "a local HF model folder, or a .gguf file.",
)
@click.option("--embedder", help="Whose neighbours are the one-shot examples (default: minilm, or the only one).")
@click.option(
    "--template",
    metavar="|".join(TEMPLATES) + "|FILE.jinja",
    help="Prompt format, as the trainer you will fine-tune with renders it: chat (the tokenizer's), alpaca "
    "(Stanford Alpaca), alpaca-lf (LLaMA-Factory's alpaca), or a Jinja chat template file (default: chat when "
    "the tokenizer has a chat template, else alpaca).",
)
@click.option("--max-length", type=int, help="Longest sequence, at least 8 (default: the model's context, <= 4096).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    help="Weights dtype (default: bfloat16 on CUDA, float32 on CPU); losses are float32 either way.",
)
@click.option("--dataset", help="Score only this dataset's samples.")
@click.option(
    "--limit",
    type=int,
    help="Score only the first N pool samples by sample_id (a fixed pseudo-random sample).",
)
@click.option("--token-budget", type=int, help="Padded tokens per batch (default: 2048 on CPU, 32768 on CUDA).")
@click.option("--max-batch", type=int, help="Sequences per batch (default: 16 on CPU, 128 on CUDA).")
@ray_options
@click.option(
    "--gpus-per-worker",
    type=int,
    default=1,
    show_default=True,
    help="GPUs of one node each Ray worker spreads its model over (a model too big for one GPU).",
)
@click.option(
    "--metrics",
    default="miwv",
    show_default=True,
    help=f"What to compute, comma-separated: {', '.join(METRICS)} (miwv: zero- and one-shot passes; ifd: zero-shot "
    "and response-alone passes, for --strategy ifd and superfilter).",
)
@click.option(
    "--pool",
    metavar="selection:ID",
    help="Score only the current members of this recorded selection (a screen: see `selections`).",
)
@click.option("--where", help="Score only the samples matching this SQL condition on the `samples` view.")
@click.option(
    "--calibrate",
    type=float,
    metavar="P",
    help="With --pool or --where: also score a seeded random P% of the full pool (0 < P <= 100), so that "
    "`select` can estimate what share of this model's top K% the screen kept.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --calibrate sample.")
@scope_option("With dataset, --dataset names the dataset (run once per dataset).")
@click.option(
    "--examples",
    type=int,
    default=1,
    show_default=True,
    metavar="K",
    help="Also compute the one-shot loss with each sample's 2nd..K-th nearest example (MIWV@k): the stability "
    "figures of `report` and --strategy miwv-mean. K=1 is the paper's MIWV.",
)
@json_option
@click.pass_obj
def score(
    catalog: miwv.Catalog,
    model: str,
    embedder: str | None,
    template: str | None,
    max_length: int | None,
    device: str,
    dtype: str | None,
    dataset: str | None,
    limit: int | None,
    token_budget: int | None,
    max_batch: int | None,
    workers: int | None,
    ray_address: str | None,
    gpus_per_worker: int,
    metrics: str,
    pool: str | None,
    where: str | None,
    calibrate: float | None,
    seed: int,
    scope: str,
    examples: int,
    as_json: bool,
) -> None:
    """Compute the losses of MODEL that are missing: zero-shot where absent, one-shot where there
    is none for the sample's current neighbour (and, with --metrics ifd, the response alone where
    absent). Interrupt and rerun at will."""
    from terminal.render import print_scored

    result = catalog.score(
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
        pool=pool,
        where=where,
        calibrate=calibrate,
        seed=seed,
        scope=scope,
        examples=examples,
    )
    emit(result, as_json, print_scored)


@cli.command()
@click.option("--selection", type=int, required=True, help="The recorded selection to train on (see `selections`).")
@click.option("--model", required=True, help="The base model: an alias, a Hugging Face id, a local folder or a .gguf.")
@click.option(
    "--template",
    metavar="|".join(TEMPLATES) + "|FILE.jinja",
    help="The prompt format the selection was scored with (default: chat when the tokenizer has one, else alpaca).",
)
@click.option("--full", is_flag=True, help="Fine-tune every weight (default: a LoRA adapter).")
@click.option("--epochs", type=float, default=3.0, show_default=True)
@click.option("--lr", type=float, default=2e-5, show_default=True, help="Peak learning rate (cosine schedule).")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Sequences per device per micro-batch.")
@click.option(
    "--gradient-accumulation",
    type=int,
    default=32,
    show_default=True,
    help="Micro-batches per optimizer step (effective batch = batch size x this: 128, Stanford Alpaca's).",
)
@click.option("--max-length", type=int, help="Longest example; longer ones are left out (default: the scorer's).")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps.")
@click.option("--warmup-ratio", type=float, default=0.03, show_default=True)
@click.option("--lora-r", type=int, default=8, show_default=True)
@click.option("--lora-alpha", type=float, default=16.0, show_default=True)
@click.option("--lora-dropout", type=float, default=0.05, show_default=True)
@click.option("--lora-targets", default="all-linear", show_default=True, help="Or module names, comma-separated.")
@click.option("--seed", type=int, default=0, show_default=True, help="Model init, data order and dropout.")
@click.option(
    "--save-steps", type=int, default=10, show_default=True, help="A checkpoint every N steps (what a kill loses)."
)
@json_option
@click.pass_obj
def train(catalog: miwv.Catalog, selection: int, model: str, as_json: bool, **options: Any) -> None:
    """Fine-tune MODEL on a recorded selection, on the prompts it was scored with. Interrupt and run
    the same command again to resume from the last checkpoint; a finished identical run is reported."""
    from terminal.render import print_trained

    emit(catalog.train(selection, model, **options), as_json, print_trained)


@cli.command()
@json_option
def models(as_json: bool) -> None:
    """List model and embedder aliases and whether their files are here."""
    from terminal.render import print_json, print_rows

    listing = miwv.models()
    if as_json:
        print_json(listing)
    else:
        print_rows(listing["models"], title="model aliases (a local HF folder or a .gguf file also works as --model)")
        print_rows(
            listing["embedders"],
            title="embedder aliases (a Hugging Face id or a local folder also works as --embedder; "
            "remote_code ones load only with MIWV_TRUST_REMOTE_CODE=1)",
        )


@cli.command("select")
@click.option("--model", help="Whose scores rank the pool (required except for --strategy random).")
@click.option(
    "--top-percent",
    type=float,
    help="Keep K% of the pool size, 0 < K <= 100 (rounded half up, at least 1 sample).",
)
@click.option("--top-k", type=int, help="Keep K samples.")
@click.option(
    "--strategy",
    type=click.Choice(list(STRATEGIES)),
    default="miwv",
    show_default=True,
    help="Ranking: the paper's MIWV, an ablation, IFD (Cherry LLM: IFD <= 1, highest first) or superfilter "
    "(Superfiltering: ifd_ppl < 1, highest first; both need `score --metrics ifd`).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --strategy random.")
@click.option("--dataset", help="Pool: samples of this dataset (default: the whole catalog).")
@click.option("--where", help='Pool: an SQL condition on the `samples` view, e.g. "n_turns = 1".')
@click.option("--embedder", help="Whose neighbours the scores used (default: minilm, or the only one).")
@click.option("--scorer", "scorer_id", type=int, help="Which scorer of --model (default: its newest).")
@click.option("--out", type=click.Path(), help="Write the samples: .jsonl, .parquet, or a folder (HF datasets).")
@click.option("--format", "file_format", type=click.Choice(EXPORT_FORMATS), help="Override the format --out implies.")
@click.option(
    "--shape",
    type=click.Choice(EXPORT_SHAPES),
    help="Alpaca fields or a messages list (default: alpaca when every sample has them).",
)
@click.option("--with-scores", is_flag=True, help="Add miwv, zero_shot_loss, one_shot_loss, neighbour_similarity.")
@click.option("--show-sql", is_flag=True, help="Print the selection query (run it yourself with `cli.py sql`).")
@click.option(
    "--for",
    "for_",
    type=click.Choice(EXPORT_TARGETS),
    help="--out is a folder for this trainer: the data and its dataset_info.json entry (LLaMA-Factory).",
)
@scope_option("With dataset, the scores with --dataset's own examples rank its members.")
@click.option(
    "--min-similarity",
    type=float,
    metavar="S",
    help="Drop samples whose one-shot example is less similar (cosine) than S: an off-task example says little.",
)
@json_option
@click.pass_obj
def select_command(
    catalog: miwv.Catalog,
    model: str | None,
    top_percent: float | None,
    top_k: int | None,
    strategy: str,
    seed: int,
    dataset: str | None,
    where: str | None,
    embedder: str | None,
    scorer_id: int | None,
    out: str | None,
    file_format: str | None,
    shape: str | None,
    with_scores: bool,
    show_sql: bool,
    for_: str | None,
    scope: str,
    min_similarity: float | None,
    as_json: bool,
) -> None:
    """Select the top K% (or K) of a pool, record the selection, and optionally write it out."""
    from terminal.render import print_selection

    selection = catalog.select(
        model,
        top_k=top_k,
        top_percent=top_percent,
        strategy=strategy,
        dataset=dataset,
        where=where,
        seed=seed,
        embedder=embedder,
        scorer_id=scorer_id,
        out=out,
        format=file_format,
        shape=shape,
        with_scores=with_scores,
        for_=for_,
        scope=scope,
        min_similarity=min_similarity,
    )
    if show_sql and not as_json:
        click.echo(selection.sql + ";")
    emit(selection, as_json, print_selection)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def selections(catalog: miwv.Catalog, as_json: bool) -> None:
    """List recorded selections (their samples: the selection_member table)."""
    from terminal.changes import print_pool_changes
    from terminal.render import print_cascades, print_json, print_rows

    rows = catalog.selections()
    columns = [
        "selection_id",
        "strategy",
        "model",
        "top_k",
        "top_percent",
        "dataset",
        "pool_size",
        "eligible",
        "selected",
        "output",
        "created_at",
    ]
    if as_json:
        print_json({"selections": rows})
    else:
        print_rows(rows, title="selections (newest first)", columns=columns)
        print_pool_changes(rows)
        print_cascades(rows)


@cli.command()
@click.option("--model", required=True)
@click.option("--embedder", help="Whose neighbours the scores used (default: minilm, or the only one).")
@click.option("--scorer", "scorer_id", type=int, help="Which scorer of --model (default: its newest).")
@click.option("--out", type=click.Path(file_okay=False), default="report", show_default=True)
@scope_option("With dataset, each dataset's rows use its own examples.")
@json_option
@click.pass_obj
def report(
    catalog: miwv.Catalog,
    model: str,
    embedder: str | None,
    scorer_id: int | None,
    out: str,
    scope: str,
    as_json: bool,
) -> None:
    """Write MIWV histograms and a per-dataset summary (summary.md) to --out, and print the summary (with
    the stability figures when `score --examples 2` or more ran)."""
    from terminal.render import print_report

    emit(catalog.report(model, out, embedder=embedder, scorer_id=scorer_id, scope=scope), as_json, print_report)


@cli.command()
@click.option("--runs", help="Training run ids, comma-separated (see `experiments`).")
@click.option(
    "--testset",
    "testsets",
    multiple=True,
    help="vicuna, koala, wizardlm, self-instruct, lima, alpaca-eval (the paper's sets and AlpacaEval; see README), "
    "or a .jsonl/.json/.parquet/.csv file of prompts; repeatable.",
)
@click.option("--reference-loss", type=click.Path(dir_okay=False), help="JSONL of prompts with reference answers.")
@click.option(
    "--judge", help="local:MODEL (alias, folder or .gguf) or openai:MODEL: judge every pair of runs in both orders."
)
@click.option("--judge-url", help="An OpenAI-compatible API base for an openai:MODEL judge (http://HOST:PORT/v1).")
@click.option(
    "--judge-key-env",
    default="OPENAI_API_KEY",
    show_default=True,
    help="The environment variable holding the judge endpoint's key (unset: no key is sent).",
)
@click.option("--base", help="Also evaluate this base model itself (a baseline run, recorded once).")
@click.option("--template", help="The baseline's template (default: chat when the tokenizer has one).")
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--sample", is_flag=True, help="Seeded sampling instead of greedy decoding.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="With --sample.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="With --sample.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --sample.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Prompts per generation batch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@json_option
@click.pass_obj
def evaluate(
    catalog: miwv.Catalog,
    runs: str | None,
    testsets: tuple[str, ...],
    reference_loss: str | None,
    judge: str | None,
    judge_url: str | None,
    judge_key_env: str,
    base: str | None,
    template: str | None,
    max_new_tokens: int,
    sample: bool,
    temperature: float,
    top_p: float,
    seed: int,
    batch_size: int,
    device: str,
    as_json: bool,
) -> None:
    """Evaluate training runs: answer test prompts, score reference answers, judge every pair (see README)."""
    from terminal.render import print_evaluated

    result = catalog.evaluate(
        runs,
        testset=list(testsets) or None,
        reference_loss=reference_loss,
        judge=judge,
        judge_url=judge_url,
        judge_key_env=judge_key_env,
        base=base,
        template=template,
        max_new_tokens=max_new_tokens,
        sample=sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        device=device,
    )
    emit(result, as_json, print_evaluated)


@cli.command()
@json_option
@click.pass_obj
def experiments(catalog: miwv.Catalog, as_json: bool) -> None:
    """Training runs x metrics: final loss, reference losses, winning scores; mean and spread over seeds."""
    from terminal.render import print_experiments, print_json

    rows = catalog.experiments()
    print_json(rows) if as_json else print_experiments(rows)


@cli.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (default: this machine only)."
)
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on, 1-65535.")
@click.pass_obj
def serve(catalog: miwv.Catalog, host: str, port: int) -> None:
    """Explore the catalog in a browser: samples, neighbours, scores, selections (read-only)."""
    catalog.serve(host, port)


@cli.command()
@json_option
@click.pass_obj
def upgrade(catalog: miwv.Catalog, as_json: bool) -> None:
    """Apply pending schema migrations (every command also does this when it opens the catalog)."""
    from terminal.render import print_upgraded

    emit(catalog.upgrade(), as_json, print_upgraded)


def main() -> None:
    cli(prog_name="cli.py")


if __name__ == "__main__":
    sys.exit(main())
