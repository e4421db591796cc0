"""`tuneforge train|evaluate|predict --task token-classification|question-answering` on small files with a tiny
model (the packaged MiniLM's tokenizer), and the bad-input contract: one line naming the culprit, exit code 2."""
import json
import shutil

import pytest

from tuneforge import AutoConfig, AutoModel
from tuneforge.cli import main

NER_TRAIN = """EU NNP B-ORG
rejects VBZ O
German JJ B-MISC
call NN O
. . O

Peter NNP B-PER
Blackburn NNP I-PER

BRUSSELS NNP B-LOC
1996-08-22 CD O
"""
CONTEXT = "The Eiffel Tower was finished in 1889 in Paris. " * 3 + "It is made of iron."


def squad_file(path, answer_start=CONTEXT.index("1889")):
    qas = [{"id": "q1", "question": "When was it finished?", "answers": [{"text": "1889", "answer_start": answer_start}]},
           {"id": "q2", "question": "Made of what?", "answers": [{"text": "iron", "answer_start": CONTEXT.index("iron")}]}]
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}))
    return path


@pytest.fixture(scope="module")
def tiny_model(minilm_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = AutoConfig.for_model("bert", vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=37, max_position_embeddings=512)
    AutoModel.from_config(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_dir / name).exists():
            shutil.copy(minilm_dir / name, folder / name)
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_token_classification_train_evaluate_predict(tiny_model, tmp_path, capsys):
    (tmp_path / "train.txt").write_text(NER_TRAIN)
    rows = [{"tokens": ["Peter", "rejects", "EU"], "tags": ["B-PER", "O", "B-ORG"]}]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "train", "--task", "token-classification", "--model", tiny_model, "--train",
                         tmp_path / "train.txt", "--eval", tmp_path / "eval.jsonl", "--output-dir", out_dir,
                         "--max-steps", 2, "--batch-size", 2)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert {"eval_f1", "eval_precision", "eval_recall", "eval_PER_f1", "eval_ORG_number"} <= set(result)
    assert result["eval_PER_number"] == 1
    config = json.loads((out_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"] and len(config["id2label"]) == 6
    assert "per-class" in (out_dir / "report.html").read_text().lower() or "PER" in (out_dir / "report.html").read_text()

    code, out, err = run(capsys, "evaluate", "--task", "token-classification", "--model", out_dir, "--data",
                         tmp_path / "eval.jsonl")
    assert code == 0, err
    assert "eval_f1" in json.loads(out.strip().splitlines()[-1])
    code, out, err = run(capsys, "predict", "--task", "token-classification", "--model", out_dir, "--data",
                         tmp_path / "train.txt", "--output", "-")
    assert code == 0, err
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [len(line["tags"]) for line in lines] == [5, 2, 2]
    assert lines[1]["tokens"] == ["Peter", "Blackburn"]

    # A tag the model was not trained on, at evaluation: named, with where it is.
    (tmp_path / "unseen.jsonl").write_text(json.dumps({"tokens": ["Paris"], "tags": ["B-CITY"]}) + "\n")
    code, _, err = run(capsys, "evaluate", "--task", "token-classification", "--model", out_dir, "--data",
                       tmp_path / "unseen.jsonl")
    assert code == 2 and "'B-CITY'" in err and "not seen in training" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_question_answering_train_and_evaluate(tiny_model, tmp_path, capsys):
    path = squad_file(tmp_path / "squad.json")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "train", "--task", "question-answering", "--model", tiny_model, "--train", path,
                         "--eval", path, "--output-dir", out_dir, "--max-steps", 2, "--batch-size", 2,
                         "--max-length", 32, "--stride", 8)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert 0 <= result["eval_exact_match"] <= 100 and 0 <= result["eval_f1"] <= 100
    code, out, err = run(capsys, "predict", "--task", "question-answering", "--model", out_dir, "--data", path,
                         "--output", "-", "--max-length", 32, "--stride", 8)
    assert code == 0, err
    answers = [json.loads(line) for line in out.strip().splitlines()]
    assert [a["id"] for a in answers] == ["q1", "q2"] and all(a["answer"] in CONTEXT for a in answers)


@pytest.mark.parametrize("case", ["tag-line", "answer-start", "no-stride"])
def test_bad_task_input_is_one_line_and_exit_code_2(case, tiny_model, tmp_path, capsys):
    if case == "tag-line":
        (tmp_path / "train.txt").write_text("EU B-ORG\nrejects\n")
        argv = ["--task", "token-classification", "--train", tmp_path / "train.txt"]
        expected = f"{tmp_path / 'train.txt'} line 2"
    elif case == "answer-start":
        argv = ["--task", "question-answering", "--train", squad_file(tmp_path / "s.json", answer_start=3)]
        expected = "question 'q1': answer_start 3 does not point at the answer '1889'"
    else:
        argv = ["--task", "question-answering", "--train", squad_file(tmp_path / "s.json"), "--max-length", 16,
                "--stride", 0]
        expected = "more than --max-length 16, and --stride 0 turns windows off"
    code, out, err = run(capsys, "train", "--model", tiny_model, "--output-dir", tmp_path / "out", "--max-steps", 1,
                         *argv)
    assert code == 2
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
