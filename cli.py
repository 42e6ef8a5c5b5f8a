"""miwv: pick the instruction-tuning data a model is weakest on, by MIWV, from an SQL catalog.

Each command parses its arguments and calls the library (catalog/, scoring/).
"""

from __future__ import annotations

import errno
import sys

import click

from catalog import DEFAULT_PATH, Catalog, UserError
from catalog.choices import (
    DEFAULT_EMBEDDER,
    DEVICE_HELP,
    DTYPES,
    EXACT_LIMIT,
    EXPORT_FORMATS,
    EXPORT_SHAPES,
    NEIGHBOUR_METHODS,
    POOLINGS,
    RECORD_SHAPES,
    STRATEGIES,
    TEMPLATES,
)
from catalog.errors import StorageError

# Commands that only read the catalog: they never change its file (an old schema is refused, not upgraded).
READ_COMMANDS = ("status", "sql", "selections", "report")


class Cli(click.Group):
    """Turns user errors and operating-system errors into one line on stderr and an exit code,
    and Ctrl-C into a resumable stop."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(error.exit_code)
        except OSError as error:
            click.echo(f"Error: {os_error_line(error)}", err=True)
            ctx.exit(StorageError.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted. Work committed so far is kept; run the command again to continue.", err=True)
            ctx.exit(130)


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
    ctx.obj = Catalog(catalog_path, auto_upgrade=ctx.invoked_subcommand not in READ_COMMANDS)


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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def ingest(
    catalog: Catalog,
    path: str,
    dataset: str | None,
    shape: str | None,
    skip_invalid: bool,
    columns: dict[str, str] | None,
    split: str | None,
    as_json: bool,
) -> None:
    """Add the samples of PATH to the catalog: a .jsonl, .json, .parquet or .csv file (text
    formats may be .gz), a `datasets` save_to_disk folder, a folder of Parquet shards, or
    hf:ORG/NAME (datasets.load_dataset: the local HF cache offline, the Hub online).

    PATH is ingested whole or not at all. Samples already in the catalog (same content)
    are not added again; their membership in --dataset is recorded.
    """
    from catalog.ingest import ingest_file
    from terminal.render import print_json

    result = ingest_file(catalog, path, dataset, shape, skip_invalid, columns, split)
    if as_json:
        print_json(result.as_dict())
        return
    click.echo(
        f"ingest {result.ingest_id}: {result.path} -> dataset {result.dataset!r} ({result.record_shape}): "
        f"{result.rows_read} rows read, {result.rows_new} new, {result.rows_duplicate} duplicates, "
        f"{result.rows_rejected} rejected in {result.seconds:.2f} s"
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_obj
def status(catalog: Catalog, as_json: bool) -> None:
    """Show samples per dataset, ingest batches, embeddings, neighbours and scores."""
    from catalog.status import catalog_status
    from terminal.render import print_json, print_status

    result = catalog_status(catalog)
    if as_json:
        print_json(result)
        return
    print_status(result)
    for line in result["advice"]:
        click.echo(line)


@cli.command(context_settings={"ignore_unknown_options": True})  # a query may start with an SQL comment: "-- ..."
@click.argument("query")
@click.option("--csv", "output", flag_value="csv", help="Print CSV.")
@click.option("--json", "output", flag_value="json", help="Print one JSON object per row.")
@click.option("--timeout", type=float, help="Stop the query after this many seconds.")
@click.pass_obj
def sql(catalog: Catalog, query: str, output: str | None, timeout: float | None) -> None:
    """Run one read-only QUERY against the catalog (views: samples, rejects, neighbours, miwv_scores).

    The query reads only the catalog: no other file can be read or written."""
    from catalog.query import run_query
    from terminal.render import print_arrow

    print_arrow(run_query(catalog, query, timeout), output or "table")


def neighbour_search_options(command):
    """--method and --exact-limit, shared by `embed` and `neighbours`."""
    command = click.option(
        "--exact-limit",
        type=click.IntRange(min=1),
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


def ray_options(command):
    """--workers and --ray-address, shared by `embed` and `score`: without them, Ray is not used."""
    command = click.option(
        "--ray-address",
        help="Run on the Ray cluster at this address ('auto': the one this machine joined), one worker per GPU.",
    )(command)
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        help="Run on N Ray workers started on this machine (one per GPU when there are GPUs).",
    )(command)


@cli.command()
@click.option(
    "--embedder",
    default=DEFAULT_EMBEDDER,
    show_default=True,
    help="Alias (minilm) or a local sentence-transformers / HF model folder.",
)
@click.option(
    "--pooling",
    type=click.Choice(POOLINGS),
    default="mean",
    show_default=True,
    help="Token pooling, recorded with the vectors (mean as in the paper, whatever the model's default).",
)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@neighbour_search_options
@ray_options
@click.pass_obj
def embed(
    catalog: Catalog,
    embedder: str,
    pooling: str,
    device: str,
    batch_size: int,
    method: str,
    exact_limit: int,
    workers: int | None,
    ray_address: str | None,
) -> None:
    """Embed samples that lack a vector, then update nearest-neighbour links.

    Only new samples are embedded; old samples get a new neighbour only where a new one is nearer.
    """
    from scoring.embed import embed_missing
    from scoring.neighbours import link_neighbours

    embedded = embed_missing(catalog, embedder, pooling, device, batch_size, workers, ray_address)
    click.echo(
        f"embedder {embedded.embedder.name} ({embedded.embedder.pooling} pooling, "
        f"{embedded.embedder.dimension} dims): {embedded.embedded} embedded, {embedded.total} in all "
        f"({embedded.seconds:.1f} s)"
    )
    _echo_links(link_neighbours(catalog, embedded.embedder, method=method, exact_limit=exact_limit, device=device))


@cli.command()
@click.option("--embedder", help="Embedder name, path or id (default: minilm, or the only one).")
@click.option("--rebuild", is_flag=True, help="Recompute every link from scratch (writes only those that differ).")
@neighbour_search_options
@click.option("--device", default="auto", show_default=True, help="Where the exact search runs: " + DEVICE_HELP)
@click.pass_obj
def neighbours(
    catalog: Catalog, embedder: str | None, rebuild: bool, method: str, exact_limit: int, device: str
) -> None:
    """Update (or --rebuild) nearest-neighbour links of embedded samples."""
    from catalog.embed import find_embedder
    from scoring.neighbours import link_neighbours

    _echo_links(link_neighbours(catalog, find_embedder(catalog, embedder), rebuild, method, exact_limit, device))


def _echo_links(result) -> None:
    click.echo(
        f"neighbours ({result.embedder}, {result.method}, {result.mode}): {result.samples} samples, "
        f"{result.new_samples} new, {result.changed} links written, {result.without_neighbour} without "
        f"a neighbour ({result.seconds:.1f} s)"
    )


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
@click.option(
    "--max-length", type=click.IntRange(min=8), help="Longest sequence (default: the model's context, <= 4096)."
)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    help="Weights dtype (default: bfloat16 on CUDA, float32 on CPU); losses are float32 either way.",
)
@click.option("--dataset", help="Score only this dataset's samples.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Score only the first N pool samples by sample_id (a fixed pseudo-random sample).",
)
@click.option(
    "--token-budget", type=click.IntRange(min=1), help="Padded tokens per batch (default: 2048 on CPU, 32768 on CUDA)."
)
@click.option("--max-batch", type=click.IntRange(min=1), help="Sequences per batch (default: 16 on CPU, 128 on CUDA).")
@ray_options
@click.option(
    "--gpus-per-worker",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="GPUs of one node each Ray worker spreads its model over (a model too big for one GPU).",
)
@click.pass_obj
def score(
    catalog: Catalog,
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
) -> None:
    """Compute the MIWV losses of MODEL that are missing: zero-shot where absent, one-shot where
    there is none for the sample's current neighbour. Interrupt and rerun at will."""
    from scoring.score import score_catalog

    result = score_catalog(
        catalog,
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
    )
    click.echo(
        f"scored {result.model} (scorer {result.scorer_id}, {result.template} template, max length "
        f"{result.max_length}, {result.device}{f' x {result.workers} workers' if result.workers > 1 else ''}): "
        f"pool {result.pool}, {result.samples} needed passes, "
        f"{result.passes} passes ({result.unscorable} unscorable), {result.tokens_run} tokens run "
        f"in {result.seconds:.1f} s"
    )
    if result.not_linked:
        click.echo(f"{result.not_linked} pool samples have no neighbour link yet: run `python cli.py embed` first")


@cli.command()
def models() -> None:
    """List model aliases and whether their weights are here."""
    from scoring.models import describe_aliases
    from terminal.render import print_rows

    print_rows(describe_aliases(), title="model aliases (a local HF folder or a .gguf file also works as --model)")


@cli.command("select")
@click.option("--model", help="Whose scores rank the pool (required except for --strategy random).")
@click.option(
    "--top-percent",
    type=click.FloatRange(min=0, min_open=True, max=100),
    help="Keep K% of the pool size (rounded half up, at least 1).",
)
@click.option("--top-k", type=click.IntRange(min=1), help="Keep K samples.")
@click.option(
    "--strategy",
    type=click.Choice(list(STRATEGIES)),
    default="miwv",
    show_default=True,
    help="Ranking: the paper's MIWV, or an ablation baseline.",
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
@click.pass_obj
def select_command(
    catalog: Catalog,
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
) -> None:
    """Select the top K% (or K) of a pool, record the selection, and optionally write it out."""
    from catalog.select import Request, select

    scorer, links = _scores_for(catalog, model, scorer_id, embedder, required=strategy != "random")
    request = Request(strategy, top_k, top_percent, dataset, where, seed, scorer, links)
    selection, exported = select(catalog, request, out, file_format, shape, with_scores)
    if show_sql:
        click.echo(selection.sql + ";")
    excluded = ", ".join(f"{count} {reason}" for reason, count in sorted(selection.excluded.items())) or "none"
    click.echo(
        f"selection {selection.selection_id} ({strategy}): pool {selection.pool_size}, eligible "
        f"{selection.eligible} (excluded: {excluded}), selected {len(selection.sample_ids)}"
    )
    if exported:
        click.echo(f"wrote {exported.rows} samples ({exported.shape}, {exported.file_format}) to {exported.path}")


def _scores_for(
    catalog: Catalog, model: str | None, scorer_id: int | None, embedder: str | None, required: bool
) -> tuple[int | None, int | None]:
    """(scorer_id, embedder_id) for --model/--scorer/--embedder; (None, None) when no model is named."""
    from catalog.embed import find_embedder
    from catalog.score import find_scorer

    if model is None:
        if required:
            raise UserError("--model is required (whose scores rank the pool), except for --strategy random")
        return None, None
    return find_scorer(catalog, model, scorer_id).scorer_id, find_embedder(catalog, embedder).embedder_id


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def selections(catalog: Catalog, as_json: bool) -> None:
    """List recorded selections (their samples: the selection_member table)."""
    from catalog.select import list_selections
    from terminal.render import print_json, print_rows

    rows = list_selections(catalog)
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
    print_json(rows) if as_json else print_rows(rows, title="selections (newest first)", columns=columns)


@cli.command()
@click.option("--model", required=True)
@click.option("--embedder", help="Whose neighbours the scores used (default: minilm, or the only one).")
@click.option("--scorer", "scorer_id", type=int, help="Which scorer of --model (default: its newest).")
@click.option("--out", type=click.Path(file_okay=False), default="report", show_default=True)
@click.pass_obj
def report(catalog: Catalog, model: str, embedder: str | None, scorer_id: int | None, out: str) -> None:
    """Write MIWV histograms and a per-dataset summary (summary.md) to --out, and print the summary."""
    from catalog.report import write_report
    from terminal.render import print_rows

    scorer, links = _scores_for(catalog, model, scorer_id, embedder, required=True)
    result = write_report(catalog, scorer, links, model, out)
    print_rows(result.summary, title=f"MIWV of {model} per dataset ({result.scorer})")
    click.echo("wrote " + ", ".join(str(path) for path in result.files))


@cli.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (default: this machine only)."
)
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.pass_obj
def serve(catalog: Catalog, host: str, port: int) -> None:
    """Explore the catalog in a browser: samples, neighbours, scores, selections (read-only)."""
    from web.app import serve as serve_app

    serve_app(catalog, host, port)


@cli.command()
@click.pass_obj
def upgrade(catalog: Catalog) -> None:
    """Apply pending schema migrations (every command that writes also does this when it opens the catalog)."""
    click.echo(f"catalog {catalog.path} is at schema revision {catalog.upgrade()}")


def main() -> None:
    cli(prog_name="cli.py")


if __name__ == "__main__":
    sys.exit(main())
