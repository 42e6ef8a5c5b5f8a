"""Length-sorted batches under a token budget: one forward pass per batch, little padding."""

from __future__ import annotations


def pack(
    lengths: list[int], token_budget: int, max_batch: int, max_padding: float = 0.25, min_tokens: int = 0
) -> list[list[int]]:
    """Group indices of `lengths` into batches, longest first.

    A batch costs (its size x its longest sequence) padded tokens and stays within
    `token_budget` and `max_batch`. A sequence joins a batch if the batch's longest is at most
    (1 + max_padding) times its own length, or if the batch is still under `min_tokens`:
    every forward pass streams all the weights, so a tiny batch costs more than some padding.
    A sequence longer than the budget gets a batch alone. Longest first means a batch that
    runs out of memory does so at the start.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        batch = batches[-1] if batches else None
        if (
            batch
            and len(batch) < max_batch
            and (len(batch) + 1) * lengths[batch[0]] <= token_budget
            and (lengths[batch[0]] <= (1 + max_padding) * lengths[index] or len(batch) * lengths[batch[0]] < min_tokens)
        ):
            batch.append(index)
        else:
            batches.append([index])
    return batches
