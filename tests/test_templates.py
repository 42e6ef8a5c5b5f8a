"""Each template renders the prompt its trainer trains with, byte for byte: the expected prompt
strings are written out here (from Stanford Alpaca's PROMPT_DICT, LLaMA-Factory's `alpaca`
template, SmolLM2's ChatML and tests/data/vicuna.jinja), never produced by the code under test."""

from __future__ import annotations

import pytest

from catalog.errors import UserError
from catalog.records import to_sample
from catalog.score import PendingSample
from scoring.batching import Batching
from scoring.passes import PassRunner
from scoring.sequences import SequenceBuilder
from scoring.templates import TEMPLATE_REVISION, template_for
from tests.conftest import REPO, fixture_records
from tests.test_losses import hf_mean_nll

VICUNA = REPO / "tests" / "data" / "vicuna.jinja"
WITH_INPUT = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
NO_INPUT = {"instruction": "Say hello.", "input": "", "output": " Hello!"}

STANFORD_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:"
)
STANFORD_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nSay hello.\n\n### Response:"
)
LF_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)
LF_WITH_INPUT = "### Instruction:\nTranslate to French.\nGood morning\n\n### Response:\n"
LF_NO_INPUT = "### Instruction:\nSay hello.\n\n### Response:\n"
CHATML_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
VICUNA_SYSTEM = (
    "<|im_start|>A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions. "
)


def expected(tokenizer, template: str, target: dict, example: dict) -> tuple[list[int], list[int]]:
    """(zero-shot ids, one-shot ids) of `target` with `example`, from the strings above."""

    def tok(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    stanford = {"Translate to French.": STANFORD_WITH_INPUT, "Say hello.": STANFORD_NO_INPUT}
    lf = {"Translate to French.": LF_WITH_INPUT, "Say hello.": LF_NO_INPUT}
    chat_user = {"Translate to French.": "Translate to French.\n\nGood morning", "Say hello.": "Say hello."}
    t, e = target["instruction"], example["instruction"]
    response, example_response = tok(target["output"]), tok(example["output"])
    if template == "alpaca":  # the example's full block, a blank line, the target's prompt
        return (
            tok(stanford[t]) + response,
            tok(stanford[e]) + example_response + tok("\n\n" + stanford[t]) + response,
        )
    if template == "alpaca-lf":  # system once; each piece tokenised alone; EOS and "\n\n" after a response
        eos = [tokenizer.eos_token_id]
        return (
            tok(LF_SYSTEM) + tok(lf[t]) + response,
            tok(LF_SYSTEM) + tok(lf[e]) + example_response + eos + tok("\n\n") + tok(lf[t]) + response,
        )
    if template == "chat":
        turn = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
        return (
            tok(CHATML_SYSTEM + turn.format(chat_user[t])) + response,
            tok(
                CHATML_SYSTEM
                + turn.format(chat_user[e])
                + example["output"]
                + "<|im_end|>\n"
                + turn.format(chat_user[t])
            )
            + response,
        )
    return (  # vicuna.jinja
        tok(f"{VICUNA_SYSTEM}USER: {chat_user[t]} ASSISTANT:") + response,
        tok(
            f"{VICUNA_SYSTEM}USER: {chat_user[e]} ASSISTANT: {example['output']}<|im_end|>"
            f"USER: {chat_user[t]} ASSISTANT:"
        )
        + response,
    )


def fields(record: dict) -> tuple[str, str]:
    return record["instruction"], record["input"]


TEMPLATE_NAMES = ["alpaca", "alpaca-lf", "chat", str(VICUNA)]


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
@pytest.mark.parametrize(("target", "example"), [(WITH_INPUT, NO_INPUT), (NO_INPUT, WITH_INPUT)])
def test_both_passes_are_the_trainers_prompt_then_the_response_ids(smollm2, template, target, example):
    _, tokenizer, _ = smollm2
    builder = SequenceBuilder(tokenizer, template, 4096)
    sample, neighbour = to_sample(target, "alpaca"), to_sample(example, "alpaca")
    zero = builder.zero_shot(sample.messages, fields(target))
    one = builder.one_shot(sample.messages, neighbour.messages, fields(target), fields(example))
    want_zero, want_one = expected(tokenizer, "vicuna" if template.endswith(".jinja") else template, target, example)
    assert zero.ids == want_zero
    assert one.ids == want_one
    # the contract: the scored ids are tokenizer(response) appended in token space, the same in both passes
    response = tokenizer(target["output"], add_special_tokens=False).input_ids
    assert zero.n_response == one.n_response == len(response)
    assert zero.ids[-zero.n_response :] == one.ids[-one.n_response :] == response


def test_stanford_alpaca_adds_bos_once_when_the_tokenizer_does(smollm2):
    from transformers import AutoTokenizer

    spec, _, _ = smollm2
    tokenizer = AutoTokenizer.from_pretrained(spec.path, add_bos_token=True)
    builder = SequenceBuilder(tokenizer, "alpaca", 4096)
    sample, neighbour = to_sample(WITH_INPUT, "alpaca"), to_sample(NO_INPUT, "alpaca")
    zero_ids, one_ids = expected(tokenizer, "alpaca", WITH_INPUT, NO_INPUT)
    assert builder.zero_shot(sample.messages, fields(WITH_INPUT)).ids == [tokenizer.bos_token_id] + zero_ids
    one = builder.one_shot(sample.messages, neighbour.messages, fields(WITH_INPUT), fields(NO_INPUT))
    assert one.ids == [tokenizer.bos_token_id] + one_ids


def test_multi_turn_earlier_exchanges_per_template(smollm2):
    """alpaca: each earlier exchange as a full block, a blank line between; the system message
    replaces the header. alpaca-lf: the system message once, EOS and "\\n\\n" after each earlier response."""
    _, tokenizer, _ = smollm2
    sample = (
        ("system", "Be brief."),
        ("user", "Hi."),
        ("assistant", "Hello."),
        ("user", "Bye?"),
        ("assistant", "Bye."),
    )

    def tok(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    stanford = SequenceBuilder(tokenizer, "alpaca", 4096).zero_shot(sample)
    assert stanford.ids == (
        tok("Be brief.\n\n### Instruction:\nHi.\n\n### Response:")
        + tok("Hello.")
        + tok("\n\nBe brief.\n\n### Instruction:\nBye?\n\n### Response:")
        + tok("Bye.")
    )
    lf = SequenceBuilder(tokenizer, "alpaca-lf", 4096).zero_shot(sample)
    assert lf.ids == (
        tok("Be brief.")
        + tok("### Instruction:\nHi.\n\n### Response:\n")
        + tok("Hello.")
        + [tokenizer.eos_token_id]
        + tok("\n\n")
        + tok("### Instruction:\nBye?\n\n### Response:\n")
        + tok("Bye.")
    )


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_cache_reuse_is_exact_where_the_example_is_a_prefix_and_off_where_not(tiny_llama, smollm2, template):
    """Stanford, LLaMA-Factory and ChatML one-shots start with the example's zero-shot ids, so they
    continue its cached pass; the Vicuna file renders " ASSISTANT: " + response inside a conversation
    but "ASSISTANT:" as the generation prompt, so its one-shots must run whole. Either way every
    loss equals HF's loss of that sequence alone."""
    _, tokenizer, _ = smollm2
    builder = SequenceBuilder(tokenizer, template, 4096)
    records = fixture_records()[:12]
    samples = [to_sample(r, "alpaca") for r in records]
    targets = [
        PendingSample(
            i,
            samples[i].messages,
            (i + 1) % 12,
            samples[(i + 1) % 12].messages,
            True,
            True,
            fields(records[i]),
            fields(records[(i + 1) % 12]),
        )
        for i in range(12)
    ]
    zero = {t.sample_id: builder.zero_shot(t.messages, t.fields) for t in targets}
    one = {
        t.sample_id: builder.one_shot(t.messages, t.neighbour_messages, t.fields, t.neighbour_fields) for t in targets
    }
    is_prefix = [one[i].ids[: len(zero[(i + 1) % 12].ids)] == zero[(i + 1) % 12].ids for i in range(12)]
    assert all(is_prefix) if template != str(VICUNA) else not any(is_prefix)
    results = []
    runner = PassRunner(tiny_llama, builder, 2, Batching(token_budget=2048, max_rows=4, max_padding=0.5))
    runner.run(targets, lambda batch, tokens: results.extend(batch))
    assert len(results) == 24
    for result in results:
        sequence = (zero if result.kind == "zero" else one)[result.sample_id]
        assert result.status == "ok" and result.n_response_tokens == sequence.n_response
        assert abs(result.sum_nll / result.n_response_tokens - hf_mean_nll(tiny_llama, sequence)) < 1e-5


def test_a_templates_identity_is_its_name_revision_and_text(smollm2, tmp_path):
    _, tokenizer, _ = smollm2
    chat, alpaca, lf = (template_for(tokenizer, name).key for name in ("chat", "alpaca", "alpaca-lf"))
    assert {chat.revision, alpaca.revision, lf.revision} == {TEMPLATE_REVISION}
    assert len({chat.digest, alpaca.digest, lf.digest}) == 3
    copy = tmp_path / "vicuna.jinja"
    copy.write_text(VICUNA.read_text(encoding="utf-8"), encoding="utf-8")
    assert template_for(tokenizer, str(copy)).key == template_for(tokenizer, str(VICUNA)).key
    copy.write_text(VICUNA.read_text(encoding="utf-8").replace("USER", "HUMAN"), encoding="utf-8")
    edited = template_for(tokenizer, str(copy)).key
    assert edited.name == "vicuna.jinja" and edited.digest != template_for(tokenizer, str(VICUNA)).key.digest


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("alpaca-gpt4", "unknown template 'alpaca-gpt4'; use one of chat, alpaca, alpaca-lf or a .jinja file"),
        ("missing.jinja", "template missing.jinja: no such file"),
    ],
)
def test_unknown_templates_are_one_clear_error(smollm2, name, message):
    _, tokenizer, _ = smollm2
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        template_for(tokenizer, name)


# Jinja templates that cannot score anything, and a word of the one-line reason each gets.
BAD_TEMPLATES = {
    "empty": (b"", "is empty"),
    "blank": (b" \n\t\n", "is empty"),
    "syntax error": (b"{% for m in messages %}{{ m.content }}", "line 1: Jinja syntax error"),
    "raise_exception": (b"{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    "include": (b"{% include 'vicuna.jinja' %}", "no loader"),
    "sandbox violation": (b"{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    "not UTF-8": (b"{{ messages[0].content }}\xff\xfe", "not UTF-8 text"),
    "undefined variable": (b"{% for m in messages %}{{ message.content }}{% endfor %}", "'message' is undefined"),
    "recursion": (b"{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursion"),
    "loop": (b"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took over"),
    "renders nothing": (b"{# a comment #}{% if false %}x{% endif %}", "renders an empty prompt"),
}


@pytest.mark.parametrize(("content", "problem"), BAD_TEMPLATES.values(), ids=BAD_TEMPLATES)
def test_a_template_that_cannot_render_is_one_line_naming_the_file(smollm2, tmp_path, content, problem):
    _, tokenizer, _ = smollm2
    path = tmp_path / "templates" / "bad.jinja"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(UserError) as refused:
        template_for(tokenizer, str(path))
    message = str(refused.value)
    assert message.startswith(f"template {path}: ") and problem in message and "\n" not in message, message


def test_a_template_that_refuses_a_system_message_is_kept_for_data_without_one(smollm2, tmp_path):
    """Like Gemma's and Mistral's: the probe without the system message renders."""
    _, tokenizer, _ = smollm2
    path = tmp_path / "no_system.jinja"
    path.write_text(
        "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:",
        encoding="utf-8",
    )
    assert template_for(tokenizer, str(path)).name == "no_system.jinja"


@pytest.mark.parametrize("template", ["alpaca", "alpaca-lf", str(VICUNA)])
def test_too_long_truncates_only_the_example_in_every_template(smollm2, template):
    _, tokenizer, _ = smollm2
    sample = to_sample(WITH_INPUT, "alpaca")
    long = {"instruction": "Count.", "input": "", "output": " ".join(str(i) for i in range(300))}
    example = to_sample(long, "alpaca")
    full = SequenceBuilder(tokenizer, template, 4096)
    zero = full.zero_shot(sample.messages, fields(WITH_INPUT))
    whole = full.one_shot(sample.messages, example.messages, fields(WITH_INPUT), fields(long))
    limit = len(whole.ids) - 100
    one = SequenceBuilder(tokenizer, template, limit).one_shot(
        sample.messages, example.messages, fields(WITH_INPUT), fields(long)
    )
    assert one.example_truncated and len(whole.ids) - 110 < len(one.ids) <= limit
    assert one.ids[-one.n_response :] == zero.ids[-zero.n_response :]  # the target's response is whole
    assert "0 1 2 3" in tokenizer.decode(one.ids) and "299" not in tokenizer.decode(one.ids)
    tight = SequenceBuilder(tokenizer, template, len(zero.ids) + 5)
    assert tight.one_shot(sample.messages, example.messages, fields(WITH_INPUT), fields(long)).status == (
        "too_long_one_shot"
    )
