"""Loaders: JSONL, Hugging Face datasets (object, local path, hub name), and the Anthropic HH-RLHF format."""

import gzip
import json
from pathlib import Path

import datasets
import pytest

from textenv import Example, TaskError, load_hf, load_hh, load_jsonl, parse_hh
from textenv.data import hh_examples

FIXTURE = Path(__file__).parent / "fixtures" / "hh_sample.jsonl"
BOOK_PROMPT = ("\n\nHuman: Can you recommend a book?\n\nAssistant: Sure, what genres do you like?"
               "\n\nHuman: I like mysteries.\n\nAssistant:")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


# ---- HH-RLHF format -------------------------------------------------------------------------------

def test_parse_hh_single_turn():
    prompt, answer = parse_hh("\n\nHuman: Hi there\n\nAssistant: Hello! How are you?")
    assert prompt == "\n\nHuman: Hi there\n\nAssistant:"
    assert answer == " Hello! How are you?"


def test_parse_hh_multi_turn_splits_at_the_last_assistant_turn():
    text = BOOK_PROMPT + " Try The Hound of the Baskervilles."
    prompt, answer = parse_hh(text)
    assert prompt == BOOK_PROMPT
    assert answer == " Try The Hound of the Baskervilles."
    assert prompt + answer == text


@pytest.mark.parametrize("text", ["no dialogue here", "\n\nHuman: only a question",
                                  "\n\nAssistant: an answer with no question"])
def test_parse_hh_rejects_text_not_in_hh_format(text):
    with pytest.raises(TaskError, match="not in HH format"):
        parse_hh(text)


def test_load_hh_fixture_prompts_chosen_rejected_and_subset():
    examples = load_hh(FIXTURE, subset="helpful")
    assert len(examples) == 6
    first = examples[0]
    assert first.prompt == "\n\nHuman: What is a good way to keep cut flowers fresh?\n\nAssistant:"
    assert first.chosen == " Trim the stems at an angle and change the water every two days."
    assert first.rejected == " Flowers are plants."
    assert first.reference == first.chosen  # the paper's reference is the HH chosen answer
    book = examples[1]
    assert book.prompt == BOOK_PROMPT
    assert book.chosen == " Try The Hound of the Baskervilles by Arthur Conan Doyle."
    assert book.rejected == " I don't read books."
    # three turns, with "Assistant:" quoted inside a human turn
    maths = examples[3]
    assert maths.prompt.endswith("\n\nHuman: Fine, what is 2+2?\n\nAssistant:")
    assert maths.prompt.count("\n\nAssistant:") == 3
    assert (maths.chosen, maths.rejected) == (" 2+2 is 4.", " 5.")
    assert examples[4].rejected == ""  # an empty final answer is kept
    assert {ex.meta["subset"] for ex in examples} == {"helpful"}


def test_load_hh_directory_laid_out_like_the_hub_repo(tmp_path):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    for subset, part in (("helpful-base", rows[:4]), ("harmless-base", rows[4:])):
        (tmp_path / subset).mkdir()
        write_jsonl(tmp_path / subset / "train.jsonl.gz", part)
    helpful = load_hh(tmp_path, "train", data_dir="helpful-base")
    harmless = load_hh(tmp_path, "train", data_dir="harmless-base")
    assert [len(helpful), len(harmless)] == [4, 2]
    assert {ex.meta["subset"] for ex in helpful} == {"helpful"}
    assert {ex.meta["subset"] for ex in harmless} == {"harmless"}
    with pytest.raises(TaskError, match="no test.jsonl.gz or test.jsonl"):
        load_hh(tmp_path, "test", data_dir="helpful-base")


def test_load_hh_from_a_datasets_object():
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    ds = datasets.Dataset.from_list(rows)
    examples = load_hh(ds, subset="harmless", limit=2)
    assert [ex.prompt for ex in examples] == [load_hh(FIXTURE)[i].prompt for i in range(2)]
    assert examples[0].meta == {"subset": "harmless"}


def test_load_hh_missing_column_names_it(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b"}])
    with pytest.raises(TaskError, match="row 0 is missing column 'rejected'"):
        load_hh(path)


def test_hh_rows_with_different_prompts_are_skipped_with_a_warning():
    good = ("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: c")
    mismatched = ("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: other\n\nAssistant: c")
    with pytest.warns(UserWarning, match="skipped 1 HH-RLHF rows"):
        examples = hh_examples([good, mismatched], "test")
    assert len(examples) == 1
    with pytest.raises(TaskError, match="no usable HH-RLHF pairs"):
        hh_examples([mismatched], "test")


# ---- JSONL ----------------------------------------------------------------------------------------

ROWS = [{"question": "2+2=", "answer": "4", "level": "easy", "id": 1},
        {"question": "7*6=", "answer": "42", "level": "hard", "id": 2}]


def test_load_jsonl_column_mapping_and_meta(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", ROWS)
    examples = load_jsonl(path, prompt="question", reference="answer", meta=["level"])
    assert examples == [Example("2+2=", reference="4", meta={"level": "easy", "id": 1}),   # every other column
                        Example("7*6=", reference="42", meta={"level": "hard", "id": 2})]
    assert load_jsonl(path, prompt="question", reference="answer") == examples
    renamed = load_jsonl(path, prompt="question", meta={"difficulty": "level"}, limit=1)
    assert renamed == [Example("2+2=", meta={"difficulty": "easy", "answer": "4", "id": 1})]


def test_load_jsonl_reads_gzip(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl.gz", ROWS)
    assert [ex.prompt for ex in load_jsonl(path, prompt="question")] == ["2+2=", "7*6="]


def test_load_jsonl_missing_column_names_it_and_the_row(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [ROWS[0], {"question": "1+1="}])
    with pytest.raises(TaskError, match=r"row 1 is missing column 'answer'"):
        load_jsonl(path, prompt="question", reference="answer")
    with pytest.raises(TaskError, match=r"missing column 'prompt'"):
        load_jsonl(path)  # the default prompt column is "prompt"


def test_load_jsonl_empty_file_and_bad_lines(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TaskError, match=r"empty\.jsonl.*empty"):
        load_jsonl(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(TaskError, match="line 2: invalid JSON"):
        load_jsonl(broken)
    with pytest.raises(TaskError, match="no such file"):
        load_jsonl(tmp_path / "absent.jsonl")


def test_load_jsonl_rejects_non_string_text(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2=", "answer": 4}])
    with pytest.raises(TaskError, match="column 'answer' is int, expected str"):
        load_jsonl(path, prompt="question", reference="answer")


# ---- Hugging Face datasets ------------------------------------------------------------------------

def test_load_hf_dataset_object_and_dataset_dict():
    ds = datasets.Dataset.from_list(ROWS)
    examples = load_hf(ds, prompt="question", reference="answer", meta=["id"])
    assert examples[1] == Example("7*6=", reference="42", meta={"id": 2, "level": "hard"})
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    assert len(load_hf(dd, "test", prompt="question")) == 1
    with pytest.raises(TaskError, match="no split 'validation'"):
        load_hf(dd, "validation", prompt="question")


def test_load_hf_local_paths(tmp_path):
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "saved"))
    assert [ex.reference for ex in load_hf(tmp_path / "saved", prompt="question", reference="answer")] == ["4", "42"]
    path = write_jsonl(tmp_path / "qa.jsonl", ROWS)
    assert [ex.prompt for ex in load_hf(str(path), prompt="question")] == ["2+2=", "7*6="]


def test_load_hf_missing_column_and_empty_dataset():
    ds = datasets.Dataset.from_list(ROWS)
    with pytest.raises(TaskError, match=r"missing column 'response'; columns: \['answer', 'id', 'level', 'question'\]"):
        load_hf(ds, prompt="question", chosen="response")
    empty = datasets.Dataset.from_dict({"question": []})
    with pytest.raises(TaskError, match="empty"):
        load_hf(empty, prompt="question")


def test_load_hf_hub_name_without_network_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TaskError, match=r"'someone/some-data'.*hub.*needs a network.*ConnectionError"):
        load_hf("someone/some-data", prompt="question")


def test_load_hf_missing_local_path():
    with pytest.raises(TaskError, match="no such file or directory"):
        load_hf("./nowhere/data.jsonl")


def test_fixture_is_in_the_exact_hh_format():
    for line in FIXTURE.read_text().splitlines():
        row = json.loads(line)
        assert row["chosen"].startswith("\n\nHuman: ") and row["rejected"].startswith("\n\nHuman: ")
