"""Record shapes normalise to the same samples and ids; bad records say what is wrong."""

import pytest

from catalog.records import RecordError, detect_shape, to_sample
from tests.conftest import fixture_records


def as_sharegpt(record: dict) -> dict:
    user = f"{record['instruction']}\n\n{record['input']}" if record["input"] else record["instruction"]
    return {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": record["output"]}]}


def as_openai(record: dict) -> dict:
    user = f"{record['instruction']}\n\n{record['input']}" if record["input"] else record["instruction"]
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]}


def test_shapes_are_detected_and_give_the_same_id_for_the_same_conversation():
    for record in fixture_records()[:60]:
        alpaca = to_sample(record, detect_shape(record))
        sharegpt = to_sample(as_sharegpt(record), detect_shape(as_sharegpt(record)))
        openai = to_sample(as_openai(record), detect_shape(as_openai(record)))
        assert alpaca.sample_id == sharegpt.sample_id == openai.sample_id
        assert alpaca.messages == sharegpt.messages == openai.messages
        assert alpaca.instruction == record["instruction"] and sharegpt.instruction is None


def test_alpaca_user_text_joins_instruction_and_input_and_keeps_extras():
    rows = fixture_records()
    with_input = next(r for r in rows if r["input"])
    without_input = next(r for r in rows if not r["input"])
    assert to_sample(with_input, "alpaca").user_text == with_input["instruction"] + "\n\n" + with_input["input"]
    assert to_sample(without_input, "alpaca").user_text == without_input["instruction"]
    dolly = next(r for r in rows if "category" in r)
    assert to_sample(dolly, "alpaca").extra == {"category": dolly["category"]}


def test_ids_depend_on_every_field_of_the_content():
    record = fixture_records()[0]
    base = to_sample(record, "alpaca").sample_id
    assert to_sample({**record, "output": record["output"] + " "}, "alpaca").sample_id != base
    assert to_sample({**record, "instruction": record["instruction"] + "."}, "alpaca").sample_id != base
    assert to_sample({**record, "category": "anything"}, "alpaca").sample_id == base  # extras are not content


def test_multi_turn_conversations_are_kept_whole_with_system():
    rows = fixture_records()
    record = {
        "messages": [{"role": "system", "content": "Be brief."}]
        + [m for r in rows[:3] for m in as_openai(r)["messages"]],
        "source": "x",
    }
    sample = to_sample(record, "openai")
    assert sample.n_turns == 3 and len(sample.messages) == 7 and sample.messages[0] == ("system", "Be brief.")
    assert sample.user_text == as_openai(rows[0])["messages"][0]["content"]
    assert sample.extra == {"source": "x"}


@pytest.mark.parametrize(
    ("record", "shape", "problem"),
    [
        ({"instruction": "Say hi", "input": ""}, "alpaca", "missing required field 'output'"),
        ({"instruction": "Say hi", "output": "   "}, "alpaca", "empty response"),
        ({"instruction": ["Say hi"], "output": "hi"}, "alpaca", "field 'instruction' must be a string, got list"),
        ({"instruction": "Say hi", "input": 3, "output": "hi"}, "alpaca", "field 'input' must be a string, got int"),
        ({"conversations": [{"from": "human", "value": "hi"}]}, "sharegpt", "must end with an assistant turn"),
        ({"conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}]}, "sharegpt", "alternate"),
        ({"conversations": [{"from": "robot", "value": "hi"}]}, "sharegpt", "unknown from 'robot'"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
            "openai",
            "empty response",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "openai", "'content' must be a string"),
        (["not", "an", "object"], "alpaca", "expected an object"),
    ],
)
def test_invalid_records_name_the_problem(record, shape, problem):
    with pytest.raises(RecordError, match=problem):
        to_sample(record, shape)
