"""Train each method with several seeds (one `python main.py` process a run) and tabulate the official
VQA accuracy as mean ± std over seeds (thin front over vqa_cp.comparison).

Usage: python tools/compare_methods.py --data DIR --seeds N --output results/NAME
       [--methods none,learned_mixin,learned_mixin+reg] [--toy] [--inf_lambda L] [--val_fraction F]
       [-- extra main.py flags]

Writes results/NAME/{comparison.json, runs/METHOD_seedS/, table.json, table.md, table.png}. Re-running
skips finished runs and retries the others; a folder made with other data or flags is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# Run as a script from anywhere: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cp.comparison import (  # noqa: E402
    DEFAULT_METHODS,
    REAL_INF_LAMBDA,
    ComparisonConfig,
    format_markdown,
    run_comparison,
)
from vqa_cp.config import TOY_DEFAULTS  # noqa: E402
from vqa_cp.errors import run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="%(prog)s --seeds N --output DIR [options] [-- main.py flags]")
    parser.add_argument("--data", type=Path, default=None, help="data folder (default data, or data/toy)")
    parser.add_argument("--seeds", type=int, required=True, help="seeds 0..N-1 per method")
    parser.add_argument("--output", type=Path, required=True, help="comparison folder, e.g. results/NAME")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma separated: none, reweight, bias_product, learned_mixin, each optionally "
                        "with +reg (the functional-entropy regulariser)")
    parser.add_argument("--toy", action="store_true", help="toy benchmark (generated if missing), toy defaults")
    parser.add_argument("--inf_lambda", type=float, default=None,
                        help=f"lambda of the +reg methods (default {TOY_DEFAULTS['inf_lambda']:g} with --toy, "
                        f"else {REAL_INF_LAMBDA:g})")
    parser.add_argument("--val_fraction", type=float, default=0.0,
                        help="hold out this fraction of train; report test at the epoch best on it")
    args = parser.parse_args(ours)
    config = ComparisonConfig(output=args.output, seeds=args.seeds, data=args.data,
                              methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                              toy=args.toy, inf_lambda=args.inf_lambda, val_fraction=args.val_fraction,
                              extra_args=tuple(extra))
    table = run_comparison(config)
    print(format_markdown(table))
    print(f"wrote {args.output}/table.md, table.json, table.png")
    return table


if __name__ == "__main__":
    run_cli(main)
