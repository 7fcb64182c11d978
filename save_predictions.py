"""Write a model's answers for every question of a split in the official results format.

    python save_predictions.py MODEL OUTPUT_FILE [--data DIR] [--split test] [--nocp] [--evaluate]

MODEL is a checkpoint file (ours or the published reference state_dict) or a training output folder.
"""

import argparse
import sys

from vqa_cp.argtypes import non_negative_int, positive_int
from vqa_cp.errors import run_cli


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="save_predictions.py", description=__doc__.splitlines()[0])
    p.add_argument("model", help="checkpoint file or training output folder")
    p.add_argument("output_file", help="results JSON to write (relative to the current folder)")
    p.add_argument("--data", default="data", help="data folder holding processed/")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--nocp", action="store_true", help="VQA v2 (train2014 / val2014) instead of VQA-CP v2")
    p.add_argument("--batch_size", type=positive_int, default=256)
    p.add_argument("--num_workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dictionary", default=None, help="word list the checkpoint was trained with (reference .pkl)")
    p.add_argument("--answers", default=None, help="answer list the checkpoint was trained with (reference .pkl)")
    p.add_argument("--evaluate", action="store_true", help="also print the official accuracy table")
    args = p.parse_args(argv)

    from vqa_cp.evaluation import format_table, official_accuracy_from_dataset
    from vqa_cp.files import check_output_file, write_json
    from vqa_cp.prediction import load_model_for_data, open_split, predict_answers, results_list
    from vqa_cp.training import pick_device

    check_output_file(args.output_file, "results file")  # before the model and the features are read
    device = pick_device(args.device)
    loaded = load_model_for_data(args.model, args.data, nocp=args.nocp, dictionary=args.dictionary,
                                 answers=args.answers)
    dataset = open_split(args.data, args.split, nocp=args.nocp)
    qids, answers = predict_answers(loaded, dataset, args.batch_size, str(device), args.num_workers)
    write_json(args.output_file, results_list(qids, answers))  # atomic: a failed write keeps the old file
    print(f"wrote {len(answers)} answers to {args.output_file}", file=sys.stderr)
    if args.evaluate:
        print(format_table(official_accuracy_from_dataset(dataset, qids, answers)))


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
