"""Length-sorted batches under a token budget: one forward pass per batch, little padding."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Batching:
    """How passes are packed into forward passes.

    token_budget: padded tokens per batch (rows x longest row).
    max_rows: rows per batch.
    max_padding: a row joins a batch if the batch's longest is at most (1 + max_padding) x its length...
    min_tokens: ...or if the batch is still under this many tokens (every forward streams all the weights).
    """

    token_budget: int
    max_rows: int
    max_padding: float = 0.25
    min_tokens: int = 0

    def halved(self) -> Batching:
        """Half the token budget and rows (a retry after running out of memory); at one row it stops shrinking."""
        return replace(self, token_budget=max(1, self.token_budget // 2), max_rows=max(1, self.max_rows // 2))

    def override(self, token_budget: int | None = None, max_rows: int | None = None) -> Batching:
        return replace(self, token_budget=token_budget or self.token_budget, max_rows=max_rows or self.max_rows)


# CPUs gain little from big batches but pay ~40 ms per forward to stream the weights; GPUs gain a lot.
CPU_BATCHING = Batching(token_budget=2048, max_rows=16, max_padding=0.1, min_tokens=512)
CUDA_BATCHING = Batching(token_budget=32768, max_rows=128, max_padding=0.5, min_tokens=8192)


def default_batching(device: str) -> Batching:
    return CUDA_BATCHING if device.startswith("cuda") else CPU_BATCHING


def pack(lengths: list[int], batching: Batching) -> list[list[int]]:
    """Group indices of `lengths` into batches, longest first.

    A batch costs (its size x its longest sequence) padded tokens and stays within the token
    budget and max rows. A sequence joins a batch if the batch's longest is at most
    (1 + max_padding) times its own length, or if the batch is still under `min_tokens`.
    A sequence longer than the budget gets a batch alone. Longest first means a batch that
    runs out of memory does so at the start.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        batch = batches[-1] if batches else None
        if (
            batch
            and len(batch) < batching.max_rows
            and (len(batch) + 1) * lengths[batch[0]] <= batching.token_budget
            and (
                lengths[batch[0]] <= (1 + batching.max_padding) * lengths[index]
                or len(batch) * lengths[batch[0]] < batching.min_tokens
            )
        ):
            batch.append(index)
        else:
            batches.append([index])
    return batches


def gpu_token_budget(
    free_bytes: int,
    weight_bytes: int,
    bytes_per_token: int,
    head_bytes: int,
    floor: int = 512,
    ceiling: int = 65536,
) -> int:
    """Padded tokens per batch that fit in a GPU's free memory once the weights are loaded.

    Args:
        free_bytes: free device memory before loading the model.
        weight_bytes: the model's share of it (parameters x bytes per parameter on this device).
        bytes_per_token: memory one token costs during a pass (KV cache kept for continuations,
            a copy when rows are gathered, and the layer activations): see `bytes_per_token`.
        head_bytes: the chunked LM head's float32 logits (HEAD_CHUNK x vocabulary x 4, twice).
    A fifth of what is left is kept back for the allocator's fragmentation. Rounded down to 256.
    """
    usable = (free_bytes - weight_bytes - head_bytes) * 4 // 5
    tokens = usable // max(1, bytes_per_token) // 256 * 256
    return int(min(ceiling, max(floor, tokens)))


def bytes_per_token(layers: int, hidden: int, kv_heads: int, head_dim: int, intermediate: int, dtype_bytes: int) -> int:
    """Memory per token of a decoder pass: the KV cache twice (kept, plus the gathered copy a
    continuation makes) over every layer, and one layer's activations (hidden states, q/k/v,
    the MLP's gate and up projections) live at a time."""
    kv = 2 * layers * 2 * kv_heads * head_dim * dtype_bytes
    activations = (4 * hidden + 3 * intermediate) * dtype_bytes
    return kv + activations
