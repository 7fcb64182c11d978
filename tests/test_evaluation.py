"""Official VQA accuracy: one hand-worked case per quirk, validations, the CLI, and a reference check."""

from __future__ import annotations

import errno
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from vqa_cp.errors import VQAError, run_cli
from vqa_cp.evaluation import (
    RESULT_FILES,
    GroundTruth,
    evaluate_files,
    load_ground_truth,
    official_accuracy,
    question_accuracies,
)
from vqa_cp.text import normalize_official, process_digit_article, process_punctuation

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / "eval" / "evaluate.py"


def accuracy_of(answers: list[str], prediction: str) -> float:
    """Unrounded official accuracy of one question."""
    gt = GroundTruth([1], [answers], ["other"], ["what is"])
    return float(question_accuracies(gt, {1: prediction})[0])


def annotation(qid: int, answers: list[str], answer_type: str = "other", question_type: str = "what is",
               with_ids: bool = True) -> dict:
    records = [{"answer": a, "answer_confidence": "yes"} for a in answers]
    if with_ids:
        for i, r in enumerate(records):
            r["answer_id"] = i + 1
    return {"question_id": qid, "image_id": 7, "question_type": question_type, "answer_type": answer_type,
            "answers": records}


# --- normalisation quirks -------------------------------------------------------------------------------

def test_identical_answers_are_not_normalised():
    assert accuracy_of(["Two"] * 10, "2") == 0.0
    assert accuracy_of(["Two"] * 10, "two") == 0.0  # not even lower-cased
    assert accuracy_of(["Two"] * 10, "Two") == 1.0
    # one differing answer switches normalisation on for all ten and for the prediction
    assert accuracy_of(["Two"] * 9 + ["2"], "2") == 1.0
    assert accuracy_of(["Two"] * 9 + ["2"], "two") == 1.0


def test_whitespace_is_cleaned_before_the_identity_check():
    answers = ["yes"] * 9 + ["yes\n"]  # identical once cleaned, so still no normalisation
    assert accuracy_of(answers, "\tyes ") == 1.0
    assert accuracy_of(answers, "Yes") == 0.0
    assert accuracy_of(["yes"] * 9 + ["no"], " Yes!\n") == 1.0  # normalised: 9 matches


def test_punctuation_rule_looks_at_the_original_text():
    assert process_punctuation("t-shirt") == "t shirt"  # no "- " or " -": replaced by a space
    assert process_punctuation("t-shirt -") == "tshirt "  # " -" occurs: every "-" deleted
    assert process_punctuation("t-shirt- ") == "tshirt "
    assert process_punctuation("yes!") == "yes "
    assert accuracy_of(["t shirt"] * 5 + ["shirt"] * 5, "t-shirt") == 1.0
    assert accuracy_of(["t shirt"] * 5 + ["shirt"] * 5, "t-shirt -") == 0.0


def test_comma_between_digits_deletes_every_mark():
    assert process_punctuation("1,000") == "1000"
    assert process_punctuation("red,blue") == "red blue"
    assert process_punctuation("1,000 red,blue t-shirt") == "1000 redblue tshirt"
    assert accuracy_of(["1000"] * 3 + ["many"] * 7, "1,000") == 0.9


def test_at_most_32_periods_are_removed():
    assert process_punctuation("x" + "." * 40) == "x" + "." * 8
    assert process_punctuation("mr. smith") == "mr smith"
    assert process_punctuation("2.5") == "2.5"  # a period followed by a digit stays
    assert process_punctuation("2.") == "2"


def test_number_words_articles_and_contractions():
    assert process_digit_article("The TWO dogs") == "2 dogs"
    assert process_digit_article("none") == "0"
    assert process_digit_article("ten eleven") == "10 eleven"
    assert process_digit_article("a an the") == ""
    assert process_digit_article("dont  know") == "don't know"
    assert process_digit_article("Im here") == "im here"  # the table's "Im" never matches after lower()
    assert normalize_official("A dog.") == "dog"
    assert accuracy_of(["dog"] * 4 + ["cat"] * 6, "The Dog!") == 1.0


# --- leave-one-out and rounding ------------------------------------------------------------------------

@pytest.mark.parametrize("c", range(11))
def test_leave_one_out_values(c):
    answers = ["red"] * c + ["blue", "green"] * 5
    answers = answers[:10]
    acc = accuracy_of(answers, "red")
    closed_form = (c * min(1, (c - 1) / 3) + (10 - c) * min(1, c / 3)) / 10
    assert acc == pytest.approx(closed_form, abs=1e-12)
    assert acc == pytest.approx([0, 0.3, 0.6, 0.9, 1, 1, 1, 1, 1, 1, 1][c], abs=1e-12)


def test_leave_one_out_sums_terms_in_answer_order_like_the_official_code():
    for positions in [(0, 1), (0, 9), (4, 7), (8, 9), (1, 2, 3)]:
        answers = ["red" if i in positions else "blue" for i in range(10)]
        c = len(positions)
        terms = [min(1, (c - (i in positions)) / 3) for i in range(10)]
        total = 0.0
        for t in terms:
            total += t
        assert accuracy_of(answers, "red") == total / 10  # bit-identical, not approximately
    # matches in the last two places: the official sum is one ulp below the closed form's 0.6
    assert accuracy_of(["blue"] * 8 + ["red"] * 2, "red") == 0.5999999999999999


def test_rounding_to_two_places_and_grouping():
    anns = [annotation(1, ["a1"] * 10, "yes/no", "is the"),
            annotation(2, ["a2"] * 10, "yes/no", "is the"),
            annotation(3, ["x"] + ["y"] * 6, "number", "how many"),  # 7 answers, one match: 2/7
            annotation(4, ["a4"] * 10, "other", "is the")]
    gt = GroundTruth.from_annotations(anns)
    result = official_accuracy(gt, {1: "a1", 2: "no", 3: "x", 4: "no"})
    assert result.per_question == {1: 100.0, 2: 0.0, 3: 28.57, 4: 0.0}
    assert result.overall == round(100 * (1 + 2 / 7) / 4, 2) == 32.14
    assert result.per_answer_type == {"yes/no": 50.0, "number": 28.57, "other": 0.0}
    assert result.per_question_type == {"is the": 33.33, "how many": 28.57}
    assert result.per_question_by_question_type == {"is the": {1: 100.0, 2: 0.0, 4: 0.0},
                                                    "how many": {3: 28.57}}
    assert result.per_question_by_answer_type == {"yes/no": {1: 100.0, 2: 0.0}, "number": {3: 28.57},
                                                  "other": {4: 0.0}}


def test_equal_answer_records_are_all_left_out():
    # without answer_id two records with equal text are equal dicts: the official `item != held_out`
    # drops both, so "red" x2 / "blue" x8 scores (8 * min(1, 2/3)) / 10 instead of 0.6
    anns = [annotation(1, ["red"] * 2 + ["blue"] * 8, with_ids=False),
            annotation(2, ["red"] * 2 + ["blue"] * 8, with_ids=True)]
    gt = GroundTruth.from_annotations(anns)
    assert question_accuracies(gt, {1: "red", 2: "red"}).tolist() == pytest.approx([8 * (2 / 3) / 10, 0.6])
    assert question_accuracies(gt, {1: "blue", 2: "blue"}).tolist() == pytest.approx([0.2, 1.0])


def test_soft_score_equals_official_accuracy_when_answers_are_normalised():
    rng = random.Random(3)
    vocabulary = ["red", "blue", "2", "dog", "don't know", "yes", "no", "10:30"]
    assert all(normalize_official(a) == a for a in vocabulary)
    answers, predictions, expected = [], {}, []
    for qid in range(300):
        gt = [rng.choice(vocabulary[:rng.randint(1, len(vocabulary))]) for _ in range(10)]
        prediction = rng.choice(vocabulary)
        answers.append(gt)
        predictions[qid] = prediction
        expected.append(min(1, 0.3 * gt.count(prediction)))
    gt = GroundTruth(list(range(300)), answers, ["other"] * 300, ["what is"] * 300)
    accs = question_accuracies(gt, predictions)
    assert accs.tolist() == pytest.approx(expected, abs=1e-12)
    assert [round(100 * a, 2) for a in accs.tolist()] == [round(100 * e, 2) for e in expected]


def clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _straightforward(anns: list[dict], predictions: dict[int, str]) -> list[float]:
    """The official algorithm written plainly from its description."""
    out = []
    for ann in anns:
        records = [dict(r, answer=clean(r["answer"])) for r in ann["answers"]]
        prediction = clean(predictions[ann["question_id"]])
        if len({r["answer"] for r in records}) > 1:
            records = [dict(r, answer=normalize_official(r["answer"])) for r in records]
            prediction = normalize_official(prediction)
        terms = [min(1, sum(1 for r in records if r != held and r["answer"] == prediction) / 3)
                 for held in records]
        out.append(float(sum(terms)) / len(terms))
    return out


def test_matches_a_straightforward_implementation_on_random_cases():
    rng = random.Random(11)
    pool = ["Two", "2", "two", "the dog", "Dog!", "dog", "1,000", "1000", "yes", "Yes.", " no\n", "t-shirt",
            "t shirt", "dont", "don't", "a", "red,blue", "red blue", "x" + "." * 40]
    anns, predictions = [], {}
    for qid in range(400):
        n = rng.choice([10, 10, 10, 3, 1, 60])
        answers = [rng.choice(pool[:rng.randint(1, len(pool))]) for _ in range(n)]
        ann = annotation(qid, answers, with_ids=rng.random() < 0.8)
        if rng.random() < 0.1:
            for r in ann["answers"]:
                r["answer_confidence"] = rng.choice(["yes", "maybe"])
        anns.append(ann)
        predictions[qid] = rng.choice(pool)
    got = question_accuracies(GroundTruth.from_annotations(anns), predictions).tolist()
    assert got == _straightforward(anns, predictions)  # exact, bit for bit


# --- files, validation, CLI ------------------------------------------------------------------------------

def write_case(tmp_path: Path, results: object, wrapped: bool = True) -> tuple[Path, Path, Path]:
    anns = [annotation(11, ["red"] * 4 + ["Red."] * 3 + ["blue"] * 3, "other", "what color is the"),
            annotation(12, ["yes"] * 10, "yes/no", "is the"),
            annotation(13, ["2"] * 2 + ["two"] + ["3"] * 7, "number", "how many")]
    questions = [{"question_id": q, "image_id": 7, "question": "?"} for q in (13, 11, 12)]  # other order
    tmp_path.mkdir(parents=True, exist_ok=True)
    q, a, r = tmp_path / "q.json", tmp_path / "a.json", tmp_path / "r.json"
    q.write_text(json.dumps({"questions": questions} if wrapped else questions))
    a.write_text(json.dumps({"annotations": anns} if wrapped else anns))
    r.write_text(json.dumps(results))
    return q, a, r


GOOD = [{"question_id": 11, "answer": "red"}, {"question_id": 12, "answer": "no"},
        {"question_id": 13, "answer": "two"}]


def test_bare_and_wrapped_files_give_the_same_result(tmp_path):
    wrapped = evaluate_files(*write_case(tmp_path / "w", GOOD, wrapped=True))
    bare = evaluate_files(*write_case(tmp_path / "b", GOOD, wrapped=False))
    assert wrapped == bare
    assert wrapped.per_question == {11: 100.0, 12: 0.0, 13: 90.0}
    assert wrapped.overall == 63.33


def load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("results, message", [
    ({"question_id": 11, "answer": "red"}, "expected a JSON list"),
    ([{"question_id": 11}], "not objects with question_id, answer"),
    ([["11", "red"]], "not objects with question_id, answer"),
    ([{"question_id": "11", "answer": "red"}], "non-integer question_id"),
    ([{"question_id": True, "answer": "red"}], "non-integer question_id"),
    ([*GOOD[:2], {"question_id": 13, "answer": 2}], "non-string answer for 1 (13)"),
    ([*GOOD, {"question_id": 12, "answer": "yes"}], "duplicate question_id, 1 (12)"),
    (GOOD[:2], "no answer for 1 (13)"),
    ([*GOOD, {"question_id": 99, "answer": "x"}], "1 (99) question ids are not in the annotations"),
])
def test_results_validation_writes_nothing(tmp_path, results, message):
    q, a, r = write_case(tmp_path, results)
    out = tmp_path / "out"
    with pytest.raises(VQAError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_cli().main(["--questions", str(q), "--annotations", str(a), "--results", str(r),
                         "--output", str(out)])
    assert "r.json" in str(err.value)
    assert not out.exists()


def test_question_file_errors(tmp_path):
    q, a, r = write_case(tmp_path, GOOD)
    q.write_text(json.dumps([{"question_id": 11}, {"question_id": 12}]))
    with pytest.raises(VQAError, match=r"1 \(13\) annotations have no question"):
        load_ground_truth(q, a)
    q.write_text(json.dumps([{"question_id": i} for i in (11, 12, 13, 14)]))
    with pytest.raises(VQAError, match=r"1 \(14\) questions have no annotation"):
        load_ground_truth(q, a)
    q.write_text('[{"question_id": 11}, {"quest')
    with pytest.raises(VQAError, match="q.json: not valid JSON"):
        load_ground_truth(q, a)
    a.write_text(json.dumps({"annotation": []}))
    q.write_text("[]")
    with pytest.raises(VQAError, match="expected a JSON list of annotations entries"):
        load_ground_truth(q, a)


def test_annotation_errors_name_the_question():
    with pytest.raises(VQAError, match=r"non-string answer in 1 \(5\)"):
        GroundTruth.from_annotations([annotation(4, ["a"]), annotation(5, ["a", 3])])
    with pytest.raises(VQAError, match=r"duplicate question_id, 1 \(4\)"):
        GroundTruth.from_annotations([annotation(4, ["a"]), annotation(4, ["b"])])
    with pytest.raises(VQAError, match=r"no ground-truth answers for 1 \(4\)"):
        GroundTruth.from_annotations([annotation(4, [])])
    with pytest.raises(VQAError, match="no questions"):
        GroundTruth.from_annotations([])
    with pytest.raises(VQAError, match="'answers' is not a list of objects"):
        GroundTruth.from_annotations([{**annotation(4, ["a"]), "answers": ["a"]}])


def test_cli_end_to_end(tmp_path):
    q, a, r = write_case(tmp_path, GOOD)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(CLI), "--questions", str(q), "--annotations", str(a),
                           "--results", str(r), "--output", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[:5]]
    assert rows == [["answer", "type", "accuracy"], ["yes/no", "0.00"], ["number", "90.00"],
                    ["other", "100.00"], ["overall", "63.33"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    assert json.loads((out / "accuracy.json").read_text()) == {
        "overall": 63.33, "perQuestionType": {"what color is the": 100.0, "is the": 0.0, "how many": 90.0},
        "perAnswerType": {"other": 100.0, "yes/no": 0.0, "number": 90.0}}
    assert json.loads((out / "evalQA.json").read_text()) == {"11": 100.0, "12": 0.0, "13": 90.0}
    assert json.loads((out / "evalQuesType.json").read_text()) == {
        "what color is the": {"11": 100.0}, "is the": {"12": 0.0}, "how many": {"13": 90.0}}
    assert json.loads((out / "evalAnsType.json").read_text()) == {
        "other": {"11": 100.0}, "yes/no": {"12": 0.0}, "number": {"13": 90.0}}

    r.write_text(json.dumps(GOOD[:1]))
    proc = subprocess.run([sys.executable, str(CLI), "--questions", str(q), "--annotations", str(a),
                           "--results", str(r)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def _fail_third_file(monkeypatch, error: OSError) -> None:
    """Make the third evaluation file's write fail with `error`."""
    real_open = open
    calls = []

    def failing_open(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".tmp"):
            calls.append(path)
            if len(calls) == 3:
                raise error
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)


@pytest.mark.parametrize("error, cause", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
])
def test_a_failed_write_keeps_the_previous_set_and_says_so_in_one_line(tmp_path, monkeypatch, capsys, error, cause):
    q, a, r = write_case(tmp_path, GOOD)
    out = tmp_path / "out"
    previous = evaluate_files(q, a, r)
    previous.write(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r.write_text(json.dumps([{**GOOD[0], "answer": "blue"}, *GOOD[1:]]))
    _fail_third_file(monkeypatch, error)
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: load_cli().main(["--questions", str(q), "--annotations", str(a), "--results", str(r),
                                         "--output", str(out)]))
    monkeypatch.undo()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and cause in err and str(out) in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporaries, old set whole


def test_a_file_where_the_output_folder_belongs_is_one_line(tmp_path, capsys):
    q, a, r = write_case(tmp_path, GOOD)
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(SystemExit):
            run_cli(lambda out=out: load_cli().main(["--questions", str(q), "--annotations", str(a),
                                                     "--results", str(r), "--output", str(out)]))
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot write the evaluation files into") and "\n" not in err
        assert str(blocker) in err
    assert blocker.read_text() == "not a folder"


def test_evaluation_files_match_the_json_module(tmp_path):
    """The four files hold what json.dump of the result's objects holds (keys as strings)."""
    result = evaluate_files(*write_case(tmp_path, GOOD))
    paths = result.write(tmp_path / "out")
    objects = (result.accuracy(), result.per_question, result.per_question_by_question_type,
               result.per_question_by_answer_type)
    for path, obj in zip(paths, objects):
        assert json.loads(path.read_text()) == json.loads(json.dumps(obj))


@pytest.mark.parametrize("wrapped", [True, False])
def test_typed_and_dict_paths_agree(tmp_path, monkeypatch, wrapped):
    """The msgspec fast path gives what the json-module path gives, also with repeated answer ids (records
    compared whole) and extra fields."""
    import vqa_cp.evaluation as evaluation

    q, a, r = write_case(tmp_path, GOOD, wrapped=wrapped)
    anns = json.loads(a.read_text())
    entries = anns["annotations"] if wrapped else anns
    entries[0]["answers"][1]["answer_id"] = entries[0]["answers"][0]["answer_id"]  # a repeated id
    entries[1]["extra"] = {"nested": [1, 2]}
    a.write_text(json.dumps(anns))
    fast = evaluate_files(q, a, r)
    monkeypatch.setattr(evaluation, "msgspec", None)
    assert evaluate_files(q, a, r) == fast
