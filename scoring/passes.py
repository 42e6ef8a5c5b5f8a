"""Plan and run the zero-shot, one-shot and response-alone passes of a group of samples.

Every one-shot sequence (chat template) starts with its example's own zero-shot sequence:
system prompt, the example's user turn, the generation prompt, the example's response. So
the example's zero-shot pass is run once with its KV cache kept, and each one-shot pass
that uses it runs only the tokens after it. Within a batch, leading tokens common to every
row (the system prompt) are run once. A one-shot whose ids do not start with its example's
zero-shot ids (a truncated example, a boundary that tokenises differently) runs whole.
Response-alone passes (a start token, then the response) share nothing with the others: they
run whole, in their own length-sorted batches. Results are the same as running every sequence
alone, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from catalog.score import PassKind, PassResult, PendingSample
from scoring.batching import Batching, pack
from scoring.losses import Past, Piece, extend
from scoring.sequences import Sequence, SequenceBuilder, Unscorable

MIN_SHARED = 8  # leading tokens worth running once per batch


Emit = Callable[[list[PassResult], int], None]  # results of a batch, tokens run for them


@dataclass(frozen=True)
class _Pass:
    kind: PassKind
    sample_id: int
    neighbour_id: int | None
    sequence: Sequence


@dataclass
class _Plan:
    prefixes: dict[int, _Pass] = field(default_factory=dict)  # sample_id -> zero-shot pass (targets' and examples')
    continuations: dict[int, list[tuple[_Pass, Piece]]] = field(default_factory=dict)  # example id -> one-shots
    whole: list[_Pass] = field(default_factory=list)  # one-shots that run from scratch
    responses: list[_Pass] = field(default_factory=list)  # response-alone passes (whole, short)
    unscorable: list[PassResult] = field(default_factory=list)


class PassRunner:
    """Runs passes for one model.

    Args:
        model: the causal LM (eval mode, on its device).
        builder: builds the sequences (tokenizer, template, max length).
        pad_id: id used for padding (never attended to).
        batching: how passes are packed into forward passes (see batching.pack).
    """

    def __init__(self, model, builder: SequenceBuilder, pad_id: int, batching: Batching) -> None:
        self.model, self.builder, self.pad_id, self.batching = model, builder, pad_id, batching

    def run(self, targets: list[PendingSample], emit: Emit) -> None:
        """Compute every pass `targets` need, calling `emit` after each batch."""
        plan = self._plan(targets)
        if plan.unscorable:
            emit(plan.unscorable, 0)
        self._run_prefixes(list(plan.prefixes.values()), plan.continuations, emit)
        for whole in (plan.whole, plan.responses):
            for batch in self._batches(whole, lambda p: len(p.sequence.ids)):
                sums, _, tokens = self._run_sequences(batch, keep=False)
                emit([_result(p, s) for p, s in zip(batch, sums, strict=True)], tokens)

    def _plan(self, targets: list[PendingSample]) -> _Plan:
        """Build every sequence; attach each one-shot to its example's zero-shot pass where its ids start with it."""
        plan = _Plan()
        for target in targets:
            if target.need_response:
                alone = self.builder.response_alone(target.messages)
                if isinstance(alone, Sequence):
                    plan.responses.append(_Pass(PassKind.RESPONSE, target.sample_id, None, alone))
                else:
                    plan.unscorable.append(PassResult(PassKind.RESPONSE, target.sample_id, None, alone.status))
            if not (target.need_zero or target.need_one):
                continue
            zero = self.builder.zero_shot(target.messages, target.fields)
            if target.need_zero:
                if isinstance(zero, Sequence):
                    plan.prefixes[target.sample_id] = _Pass(PassKind.ZERO, target.sample_id, None, zero)
                else:
                    plan.unscorable.append(PassResult(PassKind.ZERO, target.sample_id, None, zero.status))
            if not target.need_one:
                continue
            one = (
                zero
                if isinstance(zero, Unscorable)
                else self.builder.one_shot(
                    target.messages, target.neighbour_messages, target.fields, target.neighbour_fields
                )
            )
            if isinstance(one, Unscorable):  # too_long (the sample alone) or too_long_one_shot
                plan.unscorable.append(PassResult(PassKind.ONE, target.sample_id, target.neighbour_id, one.status))
                continue
            assert one.n_response == zero.n_response, "both passes must score the same response ids"
            one_pass = _Pass(PassKind.ONE, target.sample_id, target.neighbour_id, one)
            example = plan.prefixes.get(target.neighbour_id) or self._example_pass(target)
            if example is not None and one.ids[: len(example.sequence.ids)] == example.sequence.ids:
                plan.prefixes[target.neighbour_id] = example
                suffix = Piece(one.ids[len(example.sequence.ids) :], one.n_response)
                plan.continuations.setdefault(target.neighbour_id, []).append((one_pass, suffix))
            else:
                plan.whole.append(one_pass)
        return plan

    def _example_pass(self, target: PendingSample) -> _Pass | None:
        zero = self.builder.zero_shot(target.neighbour_messages, target.neighbour_fields)
        return _Pass(PassKind.ZERO, target.neighbour_id, None, zero) if isinstance(zero, Sequence) else None

    def _run_prefixes(self, prefixes: list[_Pass], continuations: dict, emit: Emit) -> None:
        """Run prefix batches; after each, the one-shot passes continuing its rows."""
        for batch in self._batches(prefixes, lambda p: len(p.sequence.ids)):
            followers = [
                (row, one, suffix) for row, p in enumerate(batch) for one, suffix in continuations.get(p.sample_id, [])
            ]
            sums, past, tokens = self._run_sequences(batch, keep=bool(followers))
            emit([_result(p, s) for p, s in zip(batch, sums, strict=True)], tokens)
            for group in self._batches(followers, lambda f: len(f[2].ids)):
                sums, _ = extend(
                    self.model, [suffix for _, _, suffix in group], self.pad_id, past, rows=[row for row, _, _ in group]
                )
                emit(
                    [_result(one, s) for (_, one, _), s in zip(group, sums, strict=True)],
                    sum(len(suffix.ids) for _, _, suffix in group),
                )

    def _run_sequences(self, batch: list[_Pass], keep: bool) -> tuple[list[float], Past | None, int]:
        """Run whole sequences; leading tokens shared by every row run once."""
        sequences = [p.sequence for p in batch]
        shared = _common_prefix(sequences)
        if shared < MIN_SHARED or len(batch) == 1:
            sums, past = extend(self.model, [Piece(s.ids, s.n_response) for s in sequences], self.pad_id, keep=keep)
            return sums, past, sum(len(s.ids) for s in sequences)
        _, head = extend(self.model, [Piece(sequences[0].ids[:shared])], self.pad_id, keep=True)
        rest = [Piece(s.ids[shared:], s.n_response) for s in sequences]
        sums, past = extend(self.model, rest, self.pad_id, head, rows=[0] * len(batch), keep=keep)
        return sums, past, shared + sum(len(p.ids) for p in rest)

    def _batches(self, items: list, length: Callable) -> list[list]:
        return [[items[i] for i in batch] for batch in pack([length(item) for item in items], self.batching)]


def _common_prefix(sequences: list[Sequence]) -> int:
    """Leading ids shared by every sequence, stopping before any row's last prompt token
    (that position predicts the first response token, so it must be in the scored part)."""
    limit = min(len(s.ids) - s.n_response - 1 for s in sequences)
    first = sequences[0].ids
    shared = 0
    while shared < limit and all(s.ids[shared] == first[shared] for s in sequences):
        shared += 1
    return shared


def _result(item: _Pass, sum_nll: float) -> PassResult:
    sequence = item.sequence
    return PassResult(
        item.kind,
        item.sample_id,
        item.neighbour_id,
        "ok",
        sum_nll,
        sequence.n_response,
        len(sequence.ids),
        sequence.example_truncated,
    )
