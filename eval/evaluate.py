"""Official VQA accuracy of a results file.

    python eval/evaluate.py --questions Q.json --annotations A.json --results R.json [--output DIR]

Prints overall and per-answer-type accuracy; with --output writes accuracy.json, evalQA.json,
evalQuesType.json and evalAnsType.json (the official demo's files) into DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.errors import run_cli  # noqa: E402
from vqa_cp.evaluation import evaluate_files, format_table  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Official VQA accuracy of a results file.")
    parser.add_argument("--questions", required=True, help="question file (VQA-CP list or VQA v2 object)")
    parser.add_argument("--annotations", required=True, help="annotation file (list or VQA v2 object)")
    parser.add_argument("--results", required=True, help='[{"question_id": int, "answer": str}, ...]')
    parser.add_argument("--output", help="directory for accuracy.json, evalQA.json, evalQuesType.json, "
                                         "evalAnsType.json")
    args = parser.parse_args(argv)
    result = evaluate_files(args.questions, args.annotations, args.results)
    print(format_table(result))
    if args.output:
        for path in result.write(args.output):
            print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
