"""Batched, cache-reusing losses equal a plain `model(input_ids, labels=...)` per sequence."""

from __future__ import annotations

import pytest
import torch

from catalog.records import to_sample
from catalog.score import PendingSample
from scoring.batching import Batching
from scoring.losses import Piece, extend
from scoring.passes import PassRunner
from scoring.sequences import Sequence, SequenceBuilder
from tests.conftest import fixture_records

pytestmark = pytest.mark.slow  # the SmolLM2 tokenizer (session fixture loads the model)


def hf_mean_nll(model, sequence: Sequence) -> float:
    """The independent reference: HF's own loss with every non-response label masked."""
    ids = torch.tensor([sequence.ids])
    labels = ids.clone()
    labels[0, : len(sequence.ids) - sequence.n_response] = -100
    with torch.inference_mode():
        return model(input_ids=ids, labels=labels).loss.item()


@pytest.fixture(scope="module")
def messages():
    return [to_sample(r, "alpaca").messages for r in fixture_records()[:40]]


def test_a_batch_equals_each_sequence_alone(tiny_llama, smollm2, messages):
    _, tokenizer, _ = smollm2
    builder = SequenceBuilder(tokenizer, "chat", 4096)
    sequences = [builder.zero_shot(m) for m in messages[:12]]
    sums, _ = extend(tiny_llama, [Piece(s.ids, s.n_response) for s in sequences], pad_id=2)
    for sequence, total in zip(sequences, sums, strict=True):
        assert abs(total / sequence.n_response - hf_mean_nll(tiny_llama, sequence)) < 1e-5


def test_continuing_a_cached_prefix_equals_the_whole_sequence(tiny_llama, smollm2, messages):
    """One-shot passes run as suffixes of their example's zero-shot pass, rows of different
    prefix lengths (padding holes in the cache), one prefix row used twice."""
    _, tokenizer, _ = smollm2
    builder = SequenceBuilder(tokenizer, "chat", 4096)
    examples = [builder.zero_shot(m) for m in messages[:3]]
    _, past = extend(tiny_llama, [Piece(s.ids, s.n_response) for s in examples], pad_id=2, keep=True)
    pairs = [(5, 0), (6, 1), (7, 2), (8, 0)]  # (target, example row)
    ones = [builder.one_shot(messages[t], messages[e]) for t, e in pairs]
    suffixes = [Piece(one.ids[len(examples[e].ids) :], one.n_response) for one, (_, e) in zip(ones, pairs, strict=True)]
    assert all(one.ids[: len(examples[e].ids)] == examples[e].ids for one, (_, e) in zip(ones, pairs, strict=True))
    sums, _ = extend(tiny_llama, suffixes, pad_id=2, past=past, rows=[e for _, e in pairs])
    for one, total in zip(ones, sums, strict=True):
        assert abs(total / one.n_response - hf_mean_nll(tiny_llama, one)) < 1e-5


def test_the_pass_runner_matches_every_sequence_alone(tiny_llama, smollm2, messages):
    """Neighbours inside and outside the group, a truncated example (runs whole), an unscorable sample."""
    _, tokenizer, _ = smollm2
    builder = SequenceBuilder(tokenizer, "chat", 600)
    long_example = to_sample(
        {"instruction": "List numbers.", "input": "", "output": " ".join(map(str, range(400)))}, "alpaca"
    ).messages
    too_long = to_sample({"instruction": "Repeat.", "input": "", "output": "word " * 700}, "alpaca").messages
    targets = [PendingSample(i, messages[i], (i + 1) % 20, messages[(i + 1) % 20], True, True) for i in range(20)]
    targets += [
        PendingSample(20, messages[20], 30, messages[30], False, True),  # example outside the group
        PendingSample(21, messages[21], 99, long_example, True, True),  # example gets truncated
        PendingSample(22, too_long, 0, messages[0], True, True),
    ]
    results = []
    PassRunner(tiny_llama, builder, 2, Batching(token_budget=900, max_rows=4, max_padding=0.1)).run(
        targets, lambda batch, tokens: results.extend(batch)
    )
    by_key = {(r.kind, r.sample_id): r for r in results}
    for target in targets:
        for kind, sequence in (
            ("zero", builder.zero_shot(target.messages)),
            ("one", builder.one_shot(target.messages, target.neighbour_messages)),
        ):
            if kind == "zero" and not target.need_zero:
                continue
            result = by_key[(kind, target.sample_id)]
            if target.sample_id == 22:
                assert result.status == "too_long" and result.sum_nll is None
                continue
            assert result.status == "ok" and result.n_response_tokens == sequence.n_response
            assert abs(result.sum_nll / result.n_response_tokens - hf_mean_nll(tiny_llama, sequence)) < 1e-5
    assert by_key[("one", 21)].example_truncated
    assert ("zero", 30) in by_key  # the outside example's own zero-shot came free with the prefix pass
