"""Data loading and validation: every problem names the file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from halo_schemas.training import DataSpec
from halo_trainer_torch.core.components.data import DataError, load_training_data, split_preference

from .conftest import write_jsonl


def _load(path: Path, method: str = "sft", **kw: object) -> object:
    return load_training_data(DataSpec(train=str(path), **kw), method)  # type: ignore[arg-type]


def test_malformed_line_names_file_and_line(tmp_path: Path, sft_file: Path) -> None:
    lines = sft_file.read_text().splitlines()
    lines[2] = '{"messages": [1, 2] "x"}'  # invalid JSON on line 3, column 21
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        _load(bad)
    # The file's line and column, not the decoder's "line 1" inside one record.
    assert err.value.problems == ["bad.jsonl:3:21: invalid JSON: Expecting ',' delimiter"]
    assert err.value.code == 422


def test_every_bad_field_is_named(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]},
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": "not a list"},
        {"text": "wrong format"},
    ]
    with pytest.raises(DataError) as err:
        _load(write_jsonl(tmp_path / "chat.jsonl", rows))
    p = err.value.problems
    assert "chat.jsonl:2: field 'messages[1].role': unknown role 'bot'" in p[0]
    assert p[1] == "chat.jsonl:3: field 'messages[0].content': must be a string, got int"
    assert p[2] == "chat.jsonl:4: field 'messages': has no assistant message, so nothing would be trained"
    assert p[3].startswith("chat.jsonl:5: field 'messages': must be a non-empty list")
    assert p[4] == "chat.jsonl:6: field 'messages': missing"
    assert "chat.jsonl:2" in str(err.value) and "chat.jsonl:6" in str(err.value)


def test_format_detection_and_method_mismatch(tmp_path: Path, pref_file: Path, sft_file: Path) -> None:
    assert _load(sft_file).format == "messages"  # type: ignore[attr-defined]
    assert _load(pref_file, "dpo").format == "preference"  # type: ignore[attr-defined]
    with pytest.raises(DataError, match="format 'preference' cannot train 'sft'"):
        _load(pref_file, "sft")
    with pytest.raises(DataError, match="cannot tell the record format from the fields \\[foo\\]"):
        _load(write_jsonl(tmp_path / "x.jsonl", [{"foo": 1}]))


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        _load(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        _load(tmp_path / "empty.jsonl")


def test_parquet_rows_are_numbered(tmp_path: Path) -> None:
    table = pa.Table.from_pylist([{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": ""}])
    pq.write_table(table, tmp_path / "pc.parquet")
    with pytest.raises(DataError) as err:
        _load(tmp_path / "pc.parquet")
    assert err.value.problems == ["pc.parquet row 2: field 'completion': is empty"]


def test_json_array_and_text_field(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text(json.dumps([{"body": "hello world"}, {"body": "more text"}]))
    data = _load(tmp_path / "t.json", text_field="body", format="text")
    assert data.format == "text" and len(data.train) == 2  # type: ignore[attr-defined]
    assert data.train[1].source == "t.json[1]"  # type: ignore[attr-defined]


def test_implicit_prompt_extraction() -> None:
    conv = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]}
    prompt, c, r = split_preference(conv)
    assert prompt == [{"role": "user", "content": "q"}]
    assert c == [{"role": "assistant", "content": "good"}] and r == [{"role": "assistant", "content": "bad"}]
    prompt, c, r = split_preference({"chosen": "Q: sky color? A: blue", "rejected": "Q: sky color? A: bright green"})
    assert (prompt, c, r) == ("Q: sky color? A: ", "blue", "bright green")  # never splits inside a word
    with pytest.raises(ValueError, match="prefix of the other"):
        split_preference({"chosen": "abc", "rejected": "abc def"})


def test_preference_problems(tmp_path: Path) -> None:
    rows = [
        {"chosen": "same", "rejected": "same", "prompt": "p "},
        {"chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"},
        {"chosen": "x"},
    ]
    with pytest.raises(DataError) as err:
        _load(write_jsonl(tmp_path / "p.jsonl", rows), "dpo")
    assert err.value.problems == [
        "p.jsonl:1: field 'rejected': identical to 'chosen', so there is no preference to learn",
        "p.jsonl:2: field 'rejected': must be the same kind as 'chosen' (both strings or both message lists)",
        "p.jsonl:3: field 'rejected': missing",
    ]


def test_eval_fraction_split_is_deterministic(sft_file: Path) -> None:
    a = _load(sft_file, eval_fraction=0.25)
    b = _load(sft_file, eval_fraction=0.25)
    assert len(a.eval) == 3 and len(a.train) == 9  # type: ignore[attr-defined]
    assert [r.source for r in a.eval] == [r.source for r in b.eval]  # type: ignore[attr-defined]
    assert not {r.source for r in a.eval} & {r.source for r in a.train}  # type: ignore[attr-defined]


def test_bundled_demo_data_is_valid() -> None:
    assert len(load_training_data(DataSpec(train="demo://demo_sft.jsonl"), "sft").train) == 40
    assert len(load_training_data(DataSpec(train="demo://demo_prefs.jsonl"), "dpo").train) == 40


def test_hub_dataset_that_cannot_be_loaded_is_named() -> None:
    # Tests run offline: a Hub id that is not cached fails as a data problem naming the dataset and split.
    with pytest.raises(DataError) as err:
        load_training_data(DataSpec(train="halo-forge-tests/no-such-dataset", split="train"), "sft")
    assert err.value.problems[0].startswith("halo-forge-tests/no-such-dataset: cannot load Hub dataset split 'train'")


def test_malformed_json_file_names_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "arr.json").write_text('[\n  {"text": "a"},\n  {"text": "b" "c"}\n]\n')
    with pytest.raises(DataError) as err:
        _load(tmp_path / "arr.json")
    assert err.value.problems == ["arr.json:3:16: invalid JSON: Expecting ',' delimiter"]


def test_alpaca_records_train_as_prompt_completion(tmp_path: Path) -> None:
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi.", "input": "", "output": "hi", "id": 7}]
    data = _load(write_jsonl(tmp_path / "alpaca.jsonl", rows))
    assert data.format == "prompt_completion" and data.source_format == "alpaca"  # type: ignore[attr-defined]
    assert data.format_label == "alpaca (as prompt_completion)"  # type: ignore[attr-defined]
    assert data.train[0].record == {"prompt": "Add the numbers.\n\n2 and 3", "completion": "5"}  # type: ignore[attr-defined]
    assert data.train[1].record == {"prompt": "Say hi.", "completion": "hi", "id": 7}  # type: ignore[attr-defined]
    bad = write_jsonl(tmp_path / "bad_alpaca.jsonl", rows + [{"instruction": "x", "output": 3}])
    with pytest.raises(DataError) as err:
        _load(bad)
    assert err.value.problems == ["bad_alpaca.jsonl:3: field 'output': must be a string, got int"]


def test_sharegpt_records_train_as_messages(tmp_path: Path) -> None:
    rows = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "hi"},
                               {"from": "gpt", "value": "hello"}]},
            {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]
    data = _load(write_jsonl(tmp_path / "sg.jsonl", rows))
    assert data.format == "messages" and data.source_format == "sharegpt"  # type: ignore[attr-defined]
    assert data.train[0].record["messages"] == [  # type: ignore[attr-defined]
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}]
    rows.append({"conversations": [{"from": "bot", "value": "x"}, {"from": "gpt", "value": 1}]})
    with pytest.raises(DataError) as err:
        _load(write_jsonl(tmp_path / "sg_bad.jsonl", rows))
    assert err.value.problems == [
        "sg_bad.jsonl:3: field 'conversations[0].from': unknown speaker 'bot' (expected human, gpt or system)",
        "sg_bad.jsonl:3: field 'conversations[1].value': must be a string"]


def test_columns_map_other_field_names(tmp_path: Path) -> None:
    rows = [{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    data = _load(path, columns={"prompt": "question", "completion": "answer"})
    assert data.format == "prompt_completion"  # type: ignore[attr-defined]
    assert data.train[1].record == {"prompt": "3+3?", "completion": "6"}  # type: ignore[attr-defined]
    prefs = write_jsonl(tmp_path / "pp.jsonl", [{"q": "Pick.", "good": "Yes, gladly.", "bad": "No."}])
    pdata = _load(prefs, "dpo", columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert pdata.train[0].record == {"prompt": "Pick.", "chosen": "Yes, gladly.", "rejected": "No."}  # type: ignore[attr-defined]
    body = write_jsonl(tmp_path / "body.jsonl", [{"body": "plain text"}])
    assert _load(body, columns={"text": "body"}).train[0].record == {"text": "plain text"}  # type: ignore[attr-defined]


def test_unknown_format_is_one_problem_listing_the_fields(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(50)]
    with pytest.raises(DataError) as err:
        _load(write_jsonl(tmp_path / "qa.jsonl", rows))
    assert len(err.value.problems) == 1 and err.value.param == "data.format"
    msg = err.value.problems[0]
    assert "cannot tell the record format from the fields [answer, question] (first record, qa.jsonl:1)" in msg
    assert "alpaca {'instruction'[, 'input'], 'output'}" in msg and "data.columns" in msg
    assert msg.count("question") == 1  # the fields are listed once
    # An explicit format whose fields the records lack: also one line, not one per record.
    with pytest.raises(DataError) as err:
        _load(tmp_path / "qa.jsonl", format="prompt_completion")
    assert len(err.value.problems) == 1
    assert "format 'prompt_completion' needs the fields" in err.value.problems[0]
    assert "(qa.jsonl:1) has [answer, question]" in err.value.problems[0]


def test_columns_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown canonical field\\(s\\) 'question'"):
        DataSpec(train="/x.jsonl", columns={"question": "prompt"})
    with pytest.raises(ValueError, match="either text_field or columns.text"):
        DataSpec(train="/x.jsonl", text_field="body", columns={"text": "content"})
