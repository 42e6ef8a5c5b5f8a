"""Summed response NLL for batches of token sequences, reusing KV caches across shared prefixes.

One primitive, `extend`, runs new tokens for a batch of rows, each row optionally continuing
a row of an earlier batch's KV cache. Three uses:

- a batch of sequences from scratch;
- the same batch after its common leading tokens (the chat template's system prompt, say)
  were run once and their cache copied to every row;
- one-shot passes continuing their example's zero-shot pass: the one-shot sequence starts
  with exactly those ids, so only the rest is run.

The decoder runs over the right-padded new tokens; the LM head and a float32 log-softmax are
applied only at the positions that predict response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

HEAD_CHUNK = 2048  # response positions per LM-head matmul: bounds the [positions, vocab] logits


@dataclass
class Past:
    """KV cache of a batch: rows of cache slots, some of them padding."""

    cache: object  # transformers DynamicCache: per layer [rows, kv_heads, slots, head_dim]
    valid: torch.Tensor  # bool [rows, slots]: which slots hold a real token

    def lengths(self) -> torch.Tensor:
        """Real tokens per row: the position the row's next token takes."""
        return self.valid.sum(dim=1)


@dataclass(frozen=True)
class Piece:
    """New tokens for one row, of which the last `n_response` are scored (0: none)."""

    ids: list[int]
    n_response: int = 0


@torch.inference_mode()
def extend(
    model, pieces: list[Piece], pad_id: int, past: Past | None = None, rows: list[int] | None = None, keep: bool = False
) -> tuple[list[float], Past | None]:
    """Run `pieces` (row i continuing row rows[i] of `past`, if given).

    Returns each piece's summed response NLL (float64; 0.0 where n_response is 0), and, with
    `keep`, the batch's cache (past rows + new tokens) for further continuations.
    """
    device = model.device
    longest = max(len(p.ids) for p in pieces)
    input_ids = torch.full((len(pieces), longest), pad_id, dtype=torch.long)
    new_valid = torch.zeros((len(pieces), longest), dtype=torch.bool)
    for i, piece in enumerate(pieces):
        input_ids[i, : len(piece.ids)] = torch.tensor(piece.ids)
        new_valid[i, : len(piece.ids)] = True
    new_valid = new_valid.to(device)
    if past is None:
        cache, valid, start = None, new_valid, torch.zeros(len(pieces), dtype=torch.long, device=device)
        # Right padding: a causal model never lets a real token see a later pad, so no mask is
        # needed, and attention takes its faster causal path.
        mask = None
    else:
        index = torch.tensor(rows, device=device)
        past_valid = past.valid.index_select(0, index)
        used = int(past_valid.any(dim=0).nonzero().max()) + 1  # slots beyond every chosen row's last token go
        cache = _select_rows(past.cache, index, used)
        valid = torch.cat([past_valid[:, :used], new_valid], dim=1)
        start = past.lengths().index_select(0, index)
        # Padding slots between a row's past and its new tokens need a mask; without any, causality suffices.
        mask = None if bool(past_valid[:, :used].all()) else valid.long()
    positions = start[:, None] + torch.arange(longest, device=device)[None, :]  # each row continues its own prefix

    output = model.get_decoder()(
        input_ids=input_ids.to(device), attention_mask=mask, position_ids=positions, cache=cache, use_cache=keep
    )
    sums = _response_nll(model, output.last_hidden_state, pieces)
    return sums, (Past(output.cache, valid) if keep else None)


def _select_rows(cache, index: torch.Tensor, slots: int):
    """A new cache holding the first `slots` slots of rows `index` of `cache` (rows may repeat)."""
    from transformers import DynamicCache

    return DynamicCache(
        ddp_cache_data=[
            (layer.keys[:, :, :slots].index_select(0, index), layer.values[:, :, :slots].index_select(0, index))
            for layer in cache.layers
        ]
    )


def _response_nll(model, hidden: torch.Tensor, pieces: list[Piece]) -> list[float]:
    """Summed NLL of each piece's last n_response tokens, from the decoder's hidden states [B, L, H]."""
    device = hidden.device
    rows, positions, targets = [], [], []
    for i, piece in enumerate(pieces):
        n, r = len(piece.ids), piece.n_response
        if r == 0:
            continue
        assert r < n, "a scored piece needs at least one token before its response"
        rows.append(torch.full((r,), i))
        positions.append(torch.arange(n - r - 1, n - 1))  # position t predicts token t + 1
        targets.append(torch.tensor(piece.ids[n - r :]))
    sums = torch.zeros(len(pieces), dtype=torch.float64, device=device)
    if not rows:
        return sums.tolist()
    rows, positions, targets = (torch.cat(x).to(device) for x in (rows, positions, targets))
    scored = hidden[rows, positions]  # [T, H]: only the positions that predict response tokens
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    nll = torch.empty(len(targets), dtype=torch.float32, device=device)
    for begin in range(0, len(targets), HEAD_CHUNK):
        chunk = slice(begin, begin + HEAD_CHUNK)
        logits = head(scored[chunk]).float()  # [chunk, vocab] in float32, whatever the weights are
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        nll[chunk] = F.cross_entropy(logits, targets[chunk], reduction="none")
    return sums.index_add_(0, rows, nll.double()).tolist()
