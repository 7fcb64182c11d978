"""Benchmark: our official VQA accuracy against a straightforward per-question implementation.

Builds a synthetic VQA-CP-v2-test-sized case (219,928 questions, 10 answers each) with realistic answer
strings, times vqa_cp.evaluation (median of --repeats runs, from annotation entries to EvalResult) and a
slow reference that works the way the official script does (every ground-truth answer normalised on
every question, explicit leave-one-out loop over answer records), checks both give identical results
and prints the times and the speed-up.

    python bench/bench_evaluation.py [--quick] [--repeats 3] [--seed 0] [--files-only]

It also writes the case as the three JSON files eval/evaluate.py reads and times, in fresh processes side
by side, `eval/evaluate.py --output DIR` end to end against merely parsing the three files with json.load.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.evaluation import GroundTruth, official_accuracy  # noqa: E402
from vqa_cp.text import clean_whitespace, process_digit_article, process_punctuation  # noqa: E402

FULL_SIZE = 219_928
QUICK_SIZE = 20_000
ANSWERS_PER_QUESTION = 10
COLOURS = ["red", "blue", "green", "white", "black", "brown", "yellow", "orange", "pink", "gray", "purple"]
THINGS = ["dog", "cat", "man", "woman", "pizza", "frisbee", "bus", "train", "kite", "table", "shirt",
          "umbrella", "skateboard", "surfboard", "giraffe", "zebra", "horse", "clock", "plate", "bench"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
QUESTION_TYPES = {"yes/no": ["is the", "are there", "is this", "does the", "is it", "can you"],
                  "number": ["how many", "how many people are", "what number is"],
                  "other": ["what color is the", "what is the", "what is on the", "where is the",
                            "what sport is", "what time", "who is", "what brand"]}


def _variant(rng: random.Random, answer: str) -> str:
    """A raw spelling of `answer` as annotators write it: case, punctuation, articles, number words."""
    kind = rng.randrange(8)
    if kind == 0:
        return answer.capitalize()
    if kind == 1:
        return answer + rng.choice([".", "!", "?", " ."])
    if kind == 2:
        return rng.choice(["the ", "a ", "The "]) + answer
    if kind == 3 and answer.isdigit() and int(answer) <= 10:
        return NUMBER_WORDS[int(answer)]
    if kind == 4 and " " in answer:
        return answer.replace(" ", rng.choice(["/", "-", " and ", ", "]), 1)
    if kind == 5:
        return " " + answer + "\n"
    return answer


def _base_answer(rng: random.Random, answer_type: str) -> str:
    if answer_type == "yes/no":
        return rng.choice(["yes", "no"])
    if answer_type == "number":
        return rng.choice([str(rng.randrange(12)), str(rng.randrange(12)), "1,000", "10:30", "2.5"])
    kind = rng.randrange(5)
    if kind == 0:
        return rng.choice(COLOURS)
    if kind == 1:
        return rng.choice(THINGS)
    if kind == 2:
        return f"{rng.choice(COLOURS)} {rng.choice(THINGS)}"
    if kind == 3:
        return rng.choice(["don't know", "dont know", "it's", "its", "t-shirt", "mr. smith", "new york"])
    return f"sign {rng.randrange(10_000)}"  # OCR-like answers: many unique strings


def synthetic_case(size: int, seed: int) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """VQA annotation entries and predictions (question_id -> answer) for `size` questions."""
    rng = random.Random(seed)
    annotations = []
    predictions = {}
    answer_types = list(QUESTION_TYPES)
    for i in range(size):
        answer_type = rng.choices(answer_types, weights=[0.41, 0.12, 0.47])[0]
        main = _base_answer(rng, answer_type)
        if rng.random() < 0.35:  # all annotators wrote the same string
            raw = [main] * ANSWERS_PER_QUESTION
        else:
            raw = [_variant(rng, main) if rng.random() < 0.7 else _base_answer(rng, answer_type)
                   for _ in range(ANSWERS_PER_QUESTION)]
        question_id = 1_000_000 + 7 * i
        annotations.append({
            "question_id": question_id,
            "question_type": rng.choice(QUESTION_TYPES[answer_type]),
            "answer_type": answer_type,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                        for j, a in enumerate(raw)],
        })
        predictions[question_id] = main if rng.random() < 0.5 else _base_answer(rng, answer_type)
    return annotations, predictions


def _normalise(text: str) -> str:
    return process_digit_article(process_punctuation(text))


def reference_accuracy(annotations: list[dict[str, Any]], predictions: dict[int, str]) -> dict[str, Any]:
    """The official algorithm written plainly: no caches, explicit leave-one-out over answer records."""
    accuracies: list[float] = []
    by_question_type: dict[str, list[float]] = {}
    by_answer_type: dict[str, list[float]] = {}
    per_question: dict[int, float] = {}
    for ann in annotations:
        records = [dict(r, answer=clean_whitespace(r["answer"])) for r in ann["answers"]]
        prediction = clean_whitespace(predictions[ann["question_id"]])
        if len({r["answer"] for r in records}) > 1:
            records = [dict(r, answer=_normalise(r["answer"])) for r in records]
            prediction = _normalise(prediction)
        terms = []
        for held_out in records:
            others = [r for r in records if r != held_out]
            terms.append(min(1, sum(1 for r in others if r["answer"] == prediction) / 3))
        acc = float(sum(terms)) / len(terms)
        accuracies.append(acc)
        by_question_type.setdefault(ann["question_type"], []).append(acc)
        by_answer_type.setdefault(ann["answer_type"], []).append(acc)
        per_question[ann["question_id"]] = round(100 * acc, 2)
    return {
        "overall": round(100 * sum(accuracies) / len(accuracies), 2),
        "perQuestionType": {k: round(100 * sum(v) / len(v), 2) for k, v in by_question_type.items()},
        "perAnswerType": {k: round(100 * sum(v) / len(v), 2) for k, v in by_answer_type.items()},
        "evalQA": per_question,
    }


def _ours(annotations: list[dict[str, Any]], predictions: dict[int, str]) -> dict[str, Any]:
    result = official_accuracy(GroundTruth.from_annotations(annotations), predictions)
    return {**result.accuracy(), "evalQA": result.per_question}


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


PARSE_ONLY = "import json, sys\nfor p in sys.argv[1:]:\n    with open(p) as f:\n        json.load(f)\n"


def write_files(folder: Path, annotations: list[dict[str, Any]], predictions: dict[int, str]) -> list[Path]:
    """The question, annotation and results files of the case (VQA-CP layout: bare lists)."""
    paths = [folder / "questions.json", folder / "annotations.json", folder / "results.json"]
    questions = [{"image_id": 1, "question": "What is it?", "question_id": a["question_id"]} for a in annotations]
    results = [{"question_id": q, "answer": a} for q, a in predictions.items()]
    full = [{**a, "image_id": 1, "multiple_choice_answer": a["answers"][0]["answer"]} for a in annotations]
    for path, obj in zip(paths, (questions, full, results)):
        path.write_text(json.dumps(obj))
    return paths


def files_section(annotations: list[dict[str, Any]], predictions: dict[int, str], repeats: int) -> None:
    """eval/evaluate.py end to end vs json.load of its inputs, each in a fresh interpreter, interleaved."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        q, a, r = write_files(Path(tmp), annotations, predictions)
        sizes = {"questions": q.stat().st_size, "annotations": a.stat().st_size, "results": r.stat().st_size}
        evaluate = [sys.executable, str(root / "eval" / "evaluate.py"), "--questions", str(q), "--annotations",
                    str(a), "--results", str(r), "--output", str(Path(tmp) / "out")]
        parse = [sys.executable, "-c", PARSE_ONLY, str(q), str(a), str(r)]
        times: dict[str, list[float]] = {"parse": [], "evaluate": []}
        for _ in range(repeats):
            for name, cmd in (("parse", parse), ("evaluate", evaluate)):
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
    parse_s, evaluate_s = (statistics.median(times[k]) for k in ("parse", "evaluate"))
    print(f"\nfiles (annotations {sizes['annotations'] / 1e6:.0f} MB, questions {sizes['questions'] / 1e6:.0f} MB, "
          f"results {sizes['results'] / 1e6:.0f} MB), fresh processes, median of {repeats}:")
    print(f"{'json.load of the three inputs':<42} {parse_s:8.3f} s")
    print(f"{'eval/evaluate.py --output (end to end)':<42} {evaluate_s:8.3f} s  ratio {evaluate_s / parse_s:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SIZE:,} questions instead of {FULL_SIZE:,}")
    parser.add_argument("--repeats", type=int, default=3, help="runs of our evaluator (median reported)")
    parser.add_argument("--reference-repeats", type=int, default=1, help="runs of the slow reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files-only", action="store_true", help="only the evaluate.py vs json.load section")
    args = parser.parse_args()
    size = QUICK_SIZE if args.quick else FULL_SIZE

    annotations, predictions = synthetic_case(size, args.seed)
    print(f"{size:,} questions x {ANSWERS_PER_QUESTION} answers")
    files_section(annotations, predictions, max(3, args.repeats))
    if args.files_only:
        return
    ours = [_timed(_ours, annotations, predictions) for _ in range(args.repeats)]
    ground_truth = GroundTruth.from_annotations(annotations)
    in_memory = [_timed(official_accuracy, ground_truth, predictions)[0] for _ in range(args.repeats)]
    reference = [_timed(reference_accuracy, annotations, predictions) for _ in range(args.reference_repeats)]

    if any(out != reference[0][1] for _, out in ours):
        raise SystemExit("MISMATCH: our evaluator and the reference disagree")
    ours_s = statistics.median(t for t, _ in ours)
    reference_s = statistics.median(t for t, _ in reference)
    print(f"identical results: overall {reference[0][1]['overall']:.2f}, "
          f"per answer type {reference[0][1]['perAnswerType']}")
    print(f"{'reference (per question, official way)':<42} {reference_s:8.3f} s  "
          f"(median of {len(reference)})")
    print(f"{'ours (annotations -> result)':<42} {ours_s:8.3f} s  (median of {len(ours)})  "
          f"speed-up {reference_s / ours_s:6.1f}x")
    print(f"{'ours, ground truth prepared (per epoch)':<42} {statistics.median(in_memory):8.3f} s  "
          f"(median of {len(in_memory)})  speed-up {reference_s / statistics.median(in_memory):6.1f}x")


if __name__ == "__main__":
    main()
