"""The token-space contract: prompt ids from the template, response ids appended, never truncated.

Per-template renderings (Stanford Alpaca, LLaMA-Factory, Jinja files) are in test_templates.py."""

from __future__ import annotations

import pytest

from catalog.records import to_sample
from scoring.sequences import Sequence, SequenceBuilder, Unscorable
from tests.conftest import fixture_records

pytestmark = pytest.mark.slow  # the real SmolLM2 tokenizer and model

EDGE_CASES = {
    "leading space": {"instruction": "Say hello.", "input": "", "output": " Hello!"},
    "leading newline": {"instruction": "Print a list.", "input": "", "output": "\n- a\n- b"},
    "with input": {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    "unicode": {"instruction": "Écris « bonjour » en japonais.", "input": "", "output": "こんにちは 👋 — «ok»"},
    "response longer than prompt": {
        "instruction": "Count.",
        "input": "",
        "output": " ".join(str(i) for i in range(300)),
    },
}


def chat(tokenizer, turns):
    return list(
        tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in turns], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_chat_sequences_are_template_prompt_plus_response_ids(smollm2, case):
    _, tokenizer, _ = smollm2
    builder = SequenceBuilder(tokenizer, "chat", 4096)
    sample = to_sample(EDGE_CASES[case], "alpaca").messages
    example = to_sample(fixture_records()[3], "alpaca").messages
    response = tokenizer(sample[-1][1], add_special_tokens=False).input_ids
    zero = builder.zero_shot(sample)
    one = builder.one_shot(sample, example)
    assert zero.ids == chat(tokenizer, [sample[0]]) + response
    assert one.ids == chat(tokenizer, [example[0], example[1], sample[0]]) + response
    assert zero.n_response == one.n_response == len(response)  # identical scored positions
    assert zero.ids[-zero.n_response :] == one.ids[-one.n_response :] == response
    assert tokenizer.eos_token_id not in response


def test_multi_turn_scores_the_last_assistant_turn_given_all_before(smollm2):
    _, tokenizer, _ = smollm2
    rows = fixture_records()
    sample = to_sample(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": rows[0]["instruction"]},
                {"role": "assistant", "content": rows[0]["output"]},
                {"role": "user", "content": rows[1]["instruction"]},
                {"role": "assistant", "content": rows[1]["output"]},
            ]
        },
        "openai",
    ).messages
    example = to_sample(rows[2], "alpaca").messages
    builder = SequenceBuilder(tokenizer, "chat", 4096)
    response = tokenizer(rows[1]["output"], add_special_tokens=False).input_ids
    assert builder.zero_shot(sample).ids == chat(tokenizer, list(sample[:-1])) + response
    # One-shot: the target's system message first, then the example, then the conversation so far.
    expected = chat(tokenizer, [sample[0], *example, *sample[1:-1]]) + response
    assert builder.one_shot(sample, example).ids == expected


def test_too_long_is_never_truncated_but_the_example_may_be(smollm2):
    _, tokenizer, _ = smollm2
    sample = to_sample(EDGE_CASES["with input"], "alpaca").messages
    example = to_sample(EDGE_CASES["response longer than prompt"], "alpaca").messages
    zero_length = len(SequenceBuilder(tokenizer, "chat", 4096).zero_shot(sample).ids)
    assert SequenceBuilder(tokenizer, "chat", zero_length - 1).zero_shot(sample) == Unscorable("too_long")

    limit = zero_length + 60  # room for the example turn, not for its whole 300-number response
    builder = SequenceBuilder(tokenizer, "chat", limit)
    one = builder.one_shot(sample, example)
    assert isinstance(one, Sequence) and one.example_truncated and len(one.ids) <= limit
    response = tokenizer("Bonjour", add_special_tokens=False).input_ids
    assert one.ids[-one.n_response :] == response  # the target's response is whole
    assert "0 1 2 3" in tokenizer.decode(one.ids) and "299" not in tokenizer.decode(one.ids)

    tight = SequenceBuilder(tokenizer, "chat", zero_length + 5)  # not even the example's user turn fits
    assert tight.one_shot(sample, example) == Unscorable("too_long_one_shot")
    assert isinstance(tight.zero_shot(sample), Sequence)
