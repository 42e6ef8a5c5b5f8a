"""Does LLaMA-Factory train on the ids our scorer scored? LLaMA-Factory 0.9.5 itself builds the ids.

A check to run by hand, not in CI: it needs LLaMA-Factory in a venv of its own (its pins clash
with the project's). Install it once (about 5 minutes; torch 2.13.0 is the local CPU wheel, an
unpinned torch pulls a CUDA build of several GB):

    python3 -m venv /tmp/lfvenv
    /tmp/lfvenv/bin/pip install torch==2.13.0
    /tmp/lfvenv/bin/pip install -r bench/llamafactory_requirements.txt  # llamafactory==0.9.5, torch kept at 2.13.0
    /tmp/lfvenv/bin/pip uninstall -y torchvision  # fails to import beside this torch; nothing here needs it

torchaudio (which LLaMA-Factory pulls in) is not importable with this CPU torch; only
LLaMA-Factory's audio plugin uses it, so its process puts an empty module in its place.

Run, from the repository root (about 3-5 minutes on 2 cores):

    HF_HUB_OFFLINE=1 .venv/bin/python bench/llamafactory_check.py [--lf-python /tmp/lfvenv/bin/python]

What it does, in this process (the project's venv):
- writes about 90 rows: real Alpaca rows from ../shared/data with and without an input, and
  rows built from real text in LLaMA-Factory's own flavours: Alpaca with `system`, `history`,
  both with an input, a whitespace-only or empty system; multi-turn ShareGPT and OpenAI rows;
- ingests them into a temp catalog, embeds them (the one-shot examples are the neighbours),
  registers a scorer per template by scoring one unrelated primer sample, and builds every
  sample's zero- and one-shot ids with the scorer's own inputs (catalog.score.pending_rows) and
  SequenceBuilder, as `score` does;
- writes `select --for llamafactory` exports of every sample in both shapes (alpaca, messages),
  and one-shot rows (the example conversation, then the sample's, as LLaMA-Factory rows: the
  example as `history` in the alpaca shape, as earlier messages in the messages shape).

Then LLaMA-Factory (a second process under --lf-python running `--lf-side` of this file)
loads each dataset with its own pipeline (get_train_args, load_tokenizer,
get_template_and_fix_tokenizer, get_dataset, stage sft, no packing, cutoff_len 10^6) and the
tokenizer the project loads (saved with save_pretrained). Templates compared:

- alpaca-lf: LLaMA-Factory `template: alpaca`;
- chat: LLaMA-Factory with no template (it parses the tokenizer's own chat template).

(Stanford `alpaca` has no LLaMA-Factory template: its export says so; it is not compared.)
Shapes: the two exports, and for alpaca-lf `source` (the rows as the user had them, zero-shot
only): alpaca-lf scores the prompt LLaMA-Factory trains, so LLaMA-Factory run on the original
file must see what was scored too. (Not for chat: a chat template sees an Alpaca row's user turn
as stored, instruction + "\\n\\n" + input, which each trainer joins its own way from the original
fields; its exports write the turn as scored.)

A row is equal when LLaMA-Factory's input_ids are our prompt ids + our response ids + the
template's suffix after a response (alpaca: EOS and "\\n\\n"; SmolLM2's chat template:
"<|im_end|>\\n"), and its labels train exactly response + suffix after the prompt (the prompt's
last id is masked). It prints a table (template x shape x zero/one: rows compared, equal) and
the first differing rows with the text around the first differing id; exit 1 when any differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "smollm2-135m"
LF_PYTHON = "/tmp/lfvenv/bin/python"
# our template -> LLaMA-Factory's `template` (None: parse the tokenizer's own chat template)
LF_TEMPLATES: dict[str, str | None] = {"alpaca-lf": "alpaca", "chat": None}
EXPORT_SHAPES = ("alpaca", "messages")
SOURCE_TEMPLATES = ("alpaca-lf",)  # whose scores must hold for LLaMA-Factory run on the original rows
IGNORE = -100  # LLaMA-Factory's label of a position it does not train
CUTOFF = 1_000_000
SHOW_DIFFERING = 3  # differing rows listed per template, shape and kind
SYSTEMS = ("You are a concise assistant.", "Answer as a patient teacher would.", "Reply in plain English.")
PRIMER = {"instruction": "Say the word primer.", "input": "", "output": "primer"}


@dataclass(frozen=True)
class Row:
    """One row of a dataset LLaMA-Factory loads, and the ids of ours it must equal."""

    sample_id: int
    label: str  # what kind of source row the sample came from
    prompt: list[int]
    response: list[int]


# ---------------------------------------------------------------- the rows


def real_rows(per_file: int = 12) -> tuple[list[dict], list[dict]]:
    """(`per_file` rows of each shared file, half with an input where it has them; more real rows
    whose text the crafted rows reuse), the same rows every run."""
    from bench.common import SHARED_DATA

    paths = sorted(SHARED_DATA.glob("*.jsonl"))
    if not paths:
        sys.exit(f"no .jsonl files in {SHARED_DATA}: point MIWV_SHARED_DATA at the shared data folder")
    chosen, spare = [], []
    for path in paths:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        rows = [r for r in rows[::23] if r["instruction"].strip() and r["output"].strip() and len(r["output"]) < 1500]
        with_input = [r for r in rows if r["input"]][: per_file // 2]
        without = [r for r in rows if not r["input"]][: per_file - len(with_input)]
        chosen += [dict(r, _label=f"alpaca, {'input' if r['input'] else 'no input'}") for r in with_input + without]
        spare += [r for r in rows if r not in with_input and r not in without]
    return chosen, spare


def llamafactory_rows(spare) -> list[dict]:
    """LLaMA-Factory's Alpaca flavours, built from real rows: system, history, both with an input,
    a whitespace-only system (content: it replaces the default header) and an empty one (absent)."""
    with_input = iter(r for r in spare if r["input"])
    without = iter(r for r in spare if not r["input"])
    rows = []

    def add(label: str, source, count: int, system: str | None = None, history: int = 0) -> None:
        for i in range(count):
            row = dict(next(source), _label=label)
            if system is not None:
                row["system"] = system if system != "*" else SYSTEMS[i % len(SYSTEMS)]
            if history:
                row["history"] = [[r["instruction"], r["output"]] for r in islice(without, history)]
            rows.append(row)

    add("lf, system", without, 4, system="*")
    add("lf, history", without, 4, history=1)
    add("lf, input + system", with_input, 4, system="*")
    add("lf, input + history", with_input, 4, history=2)
    add("lf, input + system + history", with_input, 3, system="*", history=1)
    add('lf, system " "', without, 2, system=" ")
    add('lf, input + system " "', with_input, 2, system=" ")
    add('lf, system "\\n"', with_input, 1, system="\n")
    add('lf, system ""', with_input, 1, system="")
    return rows


def conversation_rows(spare) -> tuple[list[dict], list[dict]]:
    """(ShareGPT rows, OpenAI rows): multi-turn conversations of real exchanges, some with a system."""
    exchanges = iter(r for r in reversed(spare) if not r["input"])

    def turns(n: int) -> list[tuple[str, str]]:
        return [pair for r in islice(exchanges, n) for pair in (("user", r["instruction"]), ("assistant", r["output"]))]

    names = {"user": "human", "assistant": "gpt", "system": "system"}
    sharegpt = []
    for i in range(10):
        messages = [("system", SYSTEMS[i % 3])] * (i % 3 == 0) + turns(2 + i % 2)
        sharegpt.append({"conversations": [{"from": names[r], "value": c} for r, c in messages], "_label": "sharegpt"})
    openai = []
    for i in range(6):
        messages = [("system", SYSTEMS[i % 3])] * (i % 2 == 0) + turns(2)
        openai.append({"messages": [{"role": r, "content": c} for r, c in messages], "_label": "openai"})
    return sharegpt, openai


# LLaMA-Factory's dataset_info entry for each source file (its data/README.md)
SOURCE_INFO = {
    "alpaca": {
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        }
    },
    "sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations"}},
    "openai": {
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    },
}


def write_sources(work: Path) -> tuple[dict[str, Path], dict[int, str], dict[str, list[int]]]:
    """The source files (by shape), each sample's label, and each file's rows as sample ids."""
    from catalog.records import to_sample

    chosen, spare = real_rows()
    sharegpt, openai = conversation_rows(spare)
    by_shape = {"alpaca": chosen + llamafactory_rows(spare), "sharegpt": sharegpt, "openai": openai}
    files, labels, ids = {}, {}, {}
    for shape, rows in by_shape.items():
        records = [{k: v for k, v in row.items() if k != "_label"} for row in rows]
        files[shape] = work / "source" / f"{shape}_rows.jsonl"
        _write_jsonl(files[shape], records)
        ids[shape] = [to_sample(record, shape).sample_id for record in records]
        labels.update(zip(ids[shape], (row["_label"] for row in rows), strict=True))
    (work / "source" / "dataset_info.json").write_text(
        json.dumps({f"{shape}_rows": {"file_name": f"{shape}_rows.jsonl", **SOURCE_INFO[shape]} for shape in files})
    )
    return files, labels, ids


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


# ---------------------------------------------------------------- our side


@dataclass(frozen=True)
class Scored:
    """Our ids of every sample for one template: zero-shot, one-shot (with its example), or why not."""

    zero: dict[int, tuple[list[int], list[int]]]  # sample_id -> (prompt, response)
    one: dict[int, tuple[int, list[int], list[int]]]  # sample_id -> (example id, prompt, response)
    skipped: Counter  # passes not compared, by reason


def our_ids(store, builder, scorer_id: int, embedder_id: int, sample_ids: list[int]) -> Scored:
    """The sequences `score` builds for these samples: from the rows it reads, with its builder."""
    import numpy as np

    from catalog.score import pending_rows
    from scoring.sequences import Sequence

    zero, one, skipped = {}, {}, Counter()
    for row in pending_rows(store, scorer_id, embedder_id, np.array(sample_ids, dtype=np.int64)):
        sequence = builder.zero_shot(row.messages, row.fields)
        if isinstance(sequence, Sequence):
            zero[row.sample_id] = _split(sequence)
        else:
            skipped[f"zero: {sequence.status}"] += 1
        if row.neighbour_messages is None:
            skipped["one: no neighbour"] += 1
            continue
        sequence = builder.one_shot(row.messages, row.neighbour_messages, row.fields, row.neighbour_fields)
        if not isinstance(sequence, Sequence) or sequence.example_truncated:
            skipped["one: example does not fit"] += 1
            continue
        one[row.sample_id] = (row.neighbour_id, *_split(sequence))
    return Scored(zero, one, skipped)


def _split(sequence) -> tuple[list[int], list[int]]:
    return sequence.ids[: -sequence.n_response], sequence.ids[-sequence.n_response :]


def response_suffix(tokenizer, template: str) -> list[int]:
    """What LLaMA-Factory's template trains after every response: alpaca's EOS and "\\n\\n"; after a
    chat template's assistant turn, the text its Jinja renders there (SmolLM2: "<|im_end|>\\n")."""
    if template == "alpaca-lf":
        text = tokenizer.eos_token + "\n\n"
    else:
        chat = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "RESPONSE"}]
        rendered = tokenizer.apply_chat_template(chat, tokenize=False)
        text = rendered[rendered.rindex("RESPONSE") + len("RESPONSE") :]
    return tokenizer(text, add_special_tokens=False).input_ids


# ---------------------------------------------------------------- datasets for LLaMA-Factory


def one_shot_rows(export: list[dict], ids: list[int], one: dict, shape: str) -> tuple[list[dict], list[int]]:
    """(rows, their sample ids): each sample's exported row after its example's exported row, as
    one LLaMA-Factory conversation the way our one-shot prompt is built (the target's system; the
    example's own system dropped). Alpaca shape: the example's turns go into `history`, its last
    user turn as LLaMA-Factory's converter builds it (instruction + "\\n" + input)."""
    by_id = dict(zip(ids, export, strict=True))
    rows, kept = [], []
    for sample_id, target in by_id.items():
        if sample_id not in one or one[sample_id][0] not in by_id:
            continue
        example = by_id[one[sample_id][0]]
        if shape == "alpaca":
            user = "\n".join(part for part in (example["instruction"], example["input"]) if part)
            history = example.get("history", []) + [[user, example["output"]]] + target.get("history", [])
            rows.append(dict(target, history=history))
        else:
            system = [m for m in target["messages"][:1] if m["role"] == "system"]
            turns = [m for m in example["messages"] + target["messages"] if m["role"] != "system"]
            rows.append({"messages": system + turns})
        kept.append(sample_id)
    return rows, kept


def write_dataset(folder: Path, name: str, rows: list[dict], info: dict) -> None:
    """A LLaMA-Factory dataset folder: `name`.jsonl and its dataset_info.json entry."""
    _write_jsonl(folder / f"{name}.jsonl", rows)
    (folder / "dataset_info.json").write_text(json.dumps({name: dict(info, file_name=f"{name}.jsonl")}))


def read_export(folder: Path) -> tuple[list[dict], dict]:
    """An export's rows and its dataset_info entry."""
    ((_, info),) = json.loads((folder / "dataset_info.json").read_text()).items()
    rows = [json.loads(line) for line in (folder / info["file_name"]).read_text(encoding="utf-8").splitlines()]
    return rows, info


# ---------------------------------------------------------------- LLaMA-Factory's side


def lf_side(jobs_path: str, out_path: str) -> None:
    """In LLaMA-Factory's venv: load each job's dataset through its pipeline, dump input_ids/labels."""
    import contextlib
    import importlib.machinery
    import types

    torchaudio = types.ModuleType("torchaudio")  # only its audio plugin uses it; not importable here
    torchaudio.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = torchaudio
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    jobs, results = json.loads(Path(jobs_path).read_text()), {}
    for job in jobs:
        args = {
            "model_name_or_path": job["tokenizer"],
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": job["dataset"],
            "dataset_dir": job["dataset_dir"],
            "cutoff_len": CUTOFF,
            "packing": False,
            "overwrite_cache": True,
            "output_dir": job["output_dir"],
            "report_to": "none",
        }
        if job["template"] is not None:
            args["template"] = job["template"]
        with contextlib.redirect_stdout(sys.stderr):  # it prints an example row
            model_args, data_args, training_args, _, _ = get_train_args(args)
            tokenizer_module = load_tokenizer(model_args)  # afresh: a template may change the tokenizer
            template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
            dataset = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)
        results[job["name"]] = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in dataset["train_dataset"]]
    Path(out_path).write_text(json.dumps(results))


def run_llamafactory(lf_python: str, work: Path, jobs: list[dict]) -> dict[str, list[dict]]:
    """`lf_side` in LLaMA-Factory's venv; its log goes to work/llamafactory.log."""
    jobs_path, out_path, log = work / "jobs.json", work / "lf_ids.json", work / "llamafactory.log"
    jobs_path.write_text(json.dumps(jobs))
    env = dict(os.environ, HF_DATASETS_CACHE=str(work / "hf-datasets"), HF_HUB_OFFLINE="1", PYTHONPATH="")
    with open(log, "w") as handle:
        done = subprocess.run(
            [lf_python, __file__, "--lf-side", str(jobs_path), str(out_path)], stdout=handle, stderr=handle, env=env
        )
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-25:]
        sys.exit("LLaMA-Factory's side failed:\n" + "\n".join(tail))
    return json.loads(out_path.read_text())


# ---------------------------------------------------------------- comparing


@dataclass(frozen=True)
class Difference:
    label: str
    sample_id: int
    where: str  # the first differing position and what it falls in
    ours: str  # text around it
    theirs: str


def compare(row: Row, suffix: list[int], lf: dict, tokenizer) -> Difference | None:
    """None when LLaMA-Factory builds our prompt, then trains exactly our response + `suffix`."""
    expected = row.prompt + row.response + suffix
    ids, labels = lf["input_ids"], lf["labels"]
    start = len(row.prompt)
    if ids == expected and labels[start:] == row.response + suffix and labels[start - 1] == IGNORE:
        return None
    if ids == expected:
        trained = [i for i, label in enumerate(labels) if label != IGNORE and i >= start - 1]
        at = trained[0] if trained and trained[0] < start else start
        where = f"labels from id {at} (of {len(ids)})"
    else:
        pairs = enumerate(zip(expected, ids, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), min(len(expected), len(ids)))
        part = "prompt" if at < start else "response" if at < start + len(row.response) else "suffix"
        where = f"id {at} ({part}; ours {len(expected)} ids, LLaMA-Factory {len(ids)})"
    return Difference(row.label, row.sample_id, where, _around(tokenizer, expected, at), _around(tokenizer, ids, at))


def _around(tokenizer, ids: list[int], at: int, width: int = 12) -> str:
    before, after = tokenizer.decode(ids[max(0, at - width) : at]), tokenizer.decode(ids[at : at + width])
    return f"{before!r} | {after!r}"


def report(results: dict[tuple[str, str, str], list[Difference | None]], skipped: dict[str, Counter]) -> bool:
    """Print the table and the first differing rows; True when every row is equal."""
    print(f"\n{'template':<10} {'shape':<9} {'kind':<5} {'rows':>5} {'equal':>6}")
    for (template, shape, kind), outcomes in results.items():
        equal = sum(outcome is None for outcome in outcomes)
        print(f"{template:<10} {shape:<9} {kind:<5} {len(outcomes):>5} {equal:>6}")
    for template, reasons in skipped.items():
        if reasons:
            print(f"not compared ({template}): " + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())))
    differing = {key: [d for d in outcomes if d is not None] for key, outcomes in results.items()}
    for (template, shape, kind), differences in differing.items():
        if not differences:
            continue
        labels = Counter(d.label for d in differences)
        print(
            f"\n{template} / {shape} / {kind}: {len(differences)} differ ("
            + ", ".join(f"{n} {label}" for label, n in labels.most_common())
            + ")"
        )
        for d in differences[:SHOW_DIFFERING]:
            print(f"  sample {d.sample_id} [{d.label}] first differs at {d.where}")
            print(f"    ours: {d.ours}")
            print(f"    LLaMA-Factory: {d.theirs}")
    return not any(differing.values())


# ---------------------------------------------------------------- the run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lf-python", default=LF_PYTHON, help=f"LLaMA-Factory's venv's python (default {LF_PYTHON})")
    parser.add_argument("--keep", type=Path, help="work in this new folder and keep it (datasets, LF's log)")
    args = parser.parse_args()
    if not Path(args.lf_python).is_file():
        sys.exit(f"no LLaMA-Factory venv at {args.lf_python}: install it as this file's docstring says")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    if args.keep:
        args.keep.mkdir(parents=True)
        equal = check(args.keep, args.lf_python)
    else:
        with tempfile.TemporaryDirectory(prefix="lf-check-") as work:
            equal = check(Path(work), args.lf_python)
    print(f"\n{'all equal' if equal else 'DIFFERENT'} ({time.monotonic() - started:.0f} s)")
    return 0 if equal else 1


def check(work: Path, lf_python: str) -> bool:
    """Build the catalog, the exports and our ids, let LLaMA-Factory build its ids, compare, report."""
    import miwv
    from catalog.embed import find_embedder
    from catalog.store import Catalog as Store
    from scoring.models import load_tokenizer, resolve_model

    started = time.monotonic()
    files, labels, source_ids = write_sources(work)
    (work / "primer.jsonl").write_text(json.dumps(PRIMER) + "\n")
    cat = miwv.open(work / "catalog")
    for shape, path in files.items():
        cat.ingest(path, dataset="check", shape=shape)
    cat.ingest(work / "primer.jsonl", dataset="primer")
    cat.embed()
    tokenizer = load_tokenizer(resolve_model(MODEL))
    tokenizer.save_pretrained(work / "tokenizer")
    store = Store(work / "catalog")  # what the scorer reads its rows from
    plan = Plan(work, labels, cat, store, find_embedder(store).embedder_id, tokenizer)
    for template in LF_TEMPLATES:
        plan.add_template(template, files, source_ids)
    print(f"catalog, exports and our ids: {time.monotonic() - started:.0f} s", flush=True)
    lf = run_llamafactory(lf_python, work, plan.jobs)
    print(f"LLaMA-Factory built {len(plan.jobs)} datasets: {time.monotonic() - started:.0f} s", flush=True)
    results: dict[tuple[str, str, str], list[Difference | None]] = {}
    for job in plan.jobs:
        key, rows = plan.expected[job["name"]]
        got = lf[job["name"]]
        if len(got) != len(rows):
            raise SystemExit(f"{job['name']}: LLaMA-Factory kept {len(got)} of {len(rows)} rows (see its log)")
        suffix = response_suffix(tokenizer, key[0])
        results.setdefault(key, []).extend(compare(r, suffix, g, tokenizer) for r, g in zip(rows, got, strict=True))
    return report(results, {template: scored.skipped for template, scored in plan.ours.items()})


class Plan:
    """The datasets LLaMA-Factory loads (jobs) and, per job, the table row and our ids it must match."""

    def __init__(self, work: Path, labels: dict[int, str], cat, store, embedder_id: int, tokenizer) -> None:
        self.work, self.labels, self.cat, self.store = work, labels, cat, store
        self.embedder_id, self.tokenizer = embedder_id, tokenizer
        self.jobs: list[dict] = []
        self.expected: dict[str, tuple[tuple[str, str, str], list[Row]]] = {}
        self.ours: dict[str, Scored] = {}

    def add_template(self, template: str, files: dict[str, Path], source_ids: dict[str, list[int]]) -> None:
        """Register a scorer for `template`, export every sample in both shapes, plan the jobs."""
        from scoring.sequences import SequenceBuilder
        from scoring.templates import template_for

        scorer = self.cat.score(MODEL, template=template, dataset="primer", limit=1)  # registers the scorer
        pool = len(set(self.labels))
        selection = self.cat.select(MODEL, top_k=pool, strategy="random", dataset="check", scorer_id=scorer.scorer_id)
        builder = SequenceBuilder(self.tokenizer, template_for(self.tokenizer, template), scorer.max_length)
        scored = our_ids(self.store, builder, scorer.scorer_id, self.embedder_id, selection.sample_ids)
        self.ours[template] = scored
        for shape in EXPORT_SHAPES:
            folder = self.work / f"{template}-{shape}"
            selection.write(folder, for_="llamafactory", shape=shape)
            export, info = read_export(folder)
            if len(export) != len(selection.sample_ids):
                raise SystemExit(f"{folder.name}: {len(export)} rows exported of {len(selection.sample_ids)}")
            self.add(template, shape, "zero", folder, folder.name, self.zero_rows(scored, selection.sample_ids))
            rows, kept = one_shot_rows(export, selection.sample_ids, scored.one, shape)
            one = self.work / f"{template}-{shape}-one"
            write_dataset(one, "one_shot", rows, {k: v for k, v in info.items() if k != "file_name"})
            self.add(template, shape, "one", one, "one_shot", [self.row(i, *scored.one[i][1:]) for i in kept])
        if template in SOURCE_TEMPLATES:
            for shape, ids in source_ids.items():
                folder, name = files[shape].parent, files[shape].stem
                self.add(template, "source", "zero", folder, name, self.zero_rows(scored, ids))

    def zero_rows(self, scored: Scored, ids: list[int]) -> list[Row]:
        missing = [i for i in ids if i not in scored.zero]
        if missing:
            raise SystemExit(f"no zero-shot sequence for {len(missing)} samples (too long?): {missing[:5]}")
        return [self.row(i, *scored.zero[i]) for i in ids]

    def row(self, sample_id: int, prompt: list[int], response: list[int]) -> Row:
        return Row(sample_id, self.labels[sample_id], prompt, response)

    def add(self, template: str, shape: str, kind: str, folder: Path, dataset: str, rows: list[Row]) -> None:
        name = f"{template}/{shape}/{kind}/{dataset}"
        self.jobs.append(
            {
                "name": name,
                "tokenizer": str(self.work / "tokenizer"),
                "template": LF_TEMPLATES[template],
                "dataset_dir": str(folder),
                "dataset": dataset,
                "output_dir": str(self.work / "lf-out"),
            }
        )
        self.expected[name] = ((template, shape, kind), rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--lf-side"]:
        lf_side(*sys.argv[2:4])
    else:
        sys.exit(main())
