"""main.py's flags: names and defaults of the reference main.py plus ours, the toy defaults, and their checks.

`parse_args` returns the run's configuration; `resume_args` merges a resumed run's saved flags with the
few that may change on `--resume` and refuses every other one that was given.
"""

from __future__ import annotations

import argparse
from typing import Any

from vqa_cp.argtypes import fraction, non_negative_float, non_negative_int, positive_float, positive_int
from vqa_cp.errors import VQAError

MODES = ("none", "reweight", "bias_product", "learned_mixin")
TOY_DEFAULTS = {"epochs": 8, "num_hid": 256, "batch_size": 64, "inf_lambda": 1e-8, "num_workers": 0}
REAL_DEFAULTS = {"epochs": 15, "num_hid": 1024, "batch_size": 512, "inf_lambda": 0.0, "num_workers": 2}
DEFAULT_OUTPUT = "saved_models"
# Flags a resumed run applies; every other flag must be left out or repeat the run's own value.
RESUME_APPLIES = ("epochs", "num_workers", "device", "checkpoint_every", "log_every", "tensorboard", "max_steps")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "y"):
        return True
    if text.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text}")


def build_parser() -> argparse.ArgumentParser:
    """Flags of the reference main.py (same names and defaults) plus ours."""
    p = argparse.ArgumentParser(
        prog="main.py", description="Train BUTD on VQA-CP v2 with a debiasing ensemble and the "
        "functional-entropy regulariser; evaluate with the official VQA accuracy.")
    p.add_argument("--output", default=None,
                   help=f"output folder (log.txt, metrics.jsonl, checkpoints); default {DEFAULT_OUTPUT}, or "
                        f"{DEFAULT_OUTPUT}_2, _3, ... when that one holds another run")
    p.add_argument("--overwrite", action="store_true", help="delete the run that --output holds and start anew")
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--data", default=None, help="data folder holding processed/ (default data, or data/toy)")
    p.add_argument("--toy", action="store_true", help="generate, process and train on the toy benchmark")
    p.add_argument("--nocp", action="store_true", help="VQA v2 (train2014 / val2014) instead of VQA-CP v2")
    p.add_argument("--cache_features", action="store_true", help="load all features into RAM once")
    p.add_argument("--cache_dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--eval_each_epoch", action="store_true")
    p.add_argument("--mode", choices=MODES, default="learned_mixin", help="debiasing objective")
    p.add_argument("-p", "--entropy_penalty", type=non_negative_float, default=0.36,
                   help="learned-mixin +H entropy weight (0 = plain learned-mixin)")
    p.add_argument("--epochs", type=positive_int, default=None, help="default 15 (toy: 8)")
    p.add_argument("--num_hid", type=positive_int, default=None, help="default 1024 (toy: 256)")
    p.add_argument("--model", choices=("baseline0_newatt", "baseline0"), default="baseline0_newatt")
    p.add_argument("--batch_size", type=positive_int, default=None, help="global batch, default 512 (toy: 64)")
    p.add_argument("--num_workers", type=non_negative_int, default=None, help="DataLoader workers, default 2 (toy: 0)")
    p.add_argument("--lr", type=positive_float, default=0.002)
    p.add_argument("--grad_clip", type=positive_float, default=0.25)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16 autocast")
    p.add_argument("--deterministic", action="store_true", help="bit-identical CPU runs")
    p.add_argument("--no_dropout", action="store_true", help="disable dropout (for equivalence tests)")
    g = p.add_argument_group("functional-entropy regulariser")
    g.add_argument("--inf_lambda", type=non_negative_float, default=None,
                   help="strength of the regulariser; 0 = off (default 0; toy: 1e-8)")
    g.add_argument("--norm", "--inf_norm", dest="norm", type=positive_float, default=2.0)
    g.add_argument("--estimation", "--inf_reg", dest="estimation", choices=("ent", "var", "dif_ent"), default="ent")
    g.add_argument("--optim_method", choices=("max_ent", "min_ent", "max_ent_minus"), default="max_ent")
    g.add_argument("--n_samples", type=positive_int, default=3)
    g.add_argument("--grad", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient (log-Sobolev) bound; --no-grad: gradient-free estimate")
    g.add_argument("--inf_grad", dest="grad", type=_bool, help="alias of --grad/--no-grad: true or false")
    g.add_argument("--inf_legacy", action="store_true",
                   help="the published code's wiring: a second trunk pass, the noise std differentiated, "
                        "reversed BCE arguments")
    g.add_argument("--inf_score_scale", choices=("paper", "per_question"), default="paper",
                   help="information scores as published (~1/(batch x answers)^2) or per question (batch-size "
                        "free; lambda then means something else, see the README's regulariser section)")
    p.add_argument("--val_fraction", type=fraction, default=0.0,
                   help="hold out this fraction of training questions (split by image) for validation")
    p.add_argument("--select_on", choices=("last", "val"), default="last",
                   help="report the last epoch, or the epoch best on the validation split")
    r = p.add_argument_group("checkpoints and records")
    r.add_argument("--resume", metavar="OUTPUT_DIR", default=None,
                   help="continue the run of OUTPUT_DIR from its newest checkpoint (--epochs N extends it)")
    r.add_argument("--load", metavar="CKPT", default=None, help="initialise the model from a checkpoint")
    r.add_argument("--dictionary", default=None, help="word list the --load checkpoint was trained with")
    r.add_argument("--answers", default=None, help="answer list the --load checkpoint was trained with")
    r.add_argument("--checkpoint_every", type=non_negative_int, default=0,
                   help="also checkpoint every N steps (0 = per epoch only)")
    r.add_argument("--log_every", type=positive_int, default=200,
                   help="every N steps: a step record (steps.jsonl, TensorBoard) with the ratio of the "
                        "regulariser's gradient norm to the task loss's")
    r.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                   help="also write TensorBoard events (default DIR: OUTPUT/tensorboard)")
    r.add_argument("--max_steps", type=non_negative_int, default=0, help=argparse.SUPPRESS)  # tests: stop early
    p.add_argument("--features_on_gpu", action="store_true",
                   help="with --cache_features: keep the feature tensor on the training device (GPU memory) "
                   "and gather batches there, no host-to-device copy per step")
    return p


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the toy or real defaults and refuse flag combinations that cannot work."""
    defaults = TOY_DEFAULTS if args.toy else REAL_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.data is None:
        args.data = "data/toy" if args.toy else "data"
    if args.toy:
        args.eval_each_epoch = True  # a toy epoch's evaluation takes about a second
    if args.select_on == "val" and args.val_fraction <= 0:
        raise VQAError("--select_on val needs a validation split: add --val_fraction F (e.g. 0.1)")
    if args.features_on_gpu and not args.cache_features:
        raise VQAError("--features_on_gpu needs --cache_features")
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return check_args(build_parser().parse_args(argv))


def given_flags(argv: list[str]) -> dict[str, Any]:
    """The flags written on the command line (dest -> value), defaults left out."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def resume_args(argv: list[str], saved: dict[str, Any]) -> argparse.Namespace:
    """The resumed run's own flags, with those of RESUME_APPLIES that were given; any other flag given with
    a value other than the run's is refused (a resumed run is the run that was started, not a new one)."""
    given = given_flags(argv)
    defaults = vars(build_parser().parse_args([]))  # of flags added after the run was started
    refused = [f"--{key} {value} (the run has {saved.get(key, defaults.get(key))})" for key, value in given.items()
               if key not in RESUME_APPLIES and key != "resume" and saved.get(key, defaults.get(key)) != value]
    if refused:
        raise VQAError(f"--resume continues the run as it was started, so these flags cannot change: "
                       f"{', '.join(refused)}; start a new run with --output instead")
    merged = dict(saved)
    merged.update({key: value for key, value in given.items() if key in RESUME_APPLIES})
    merged["resume"] = given["resume"]
    merged["overwrite"] = False
    for key, value in defaults.items():
        merged.setdefault(key, value)
    return argparse.Namespace(**merged)
