"""The VQA-CP check against merely parsing its inputs, side by side, at a rehearsal scale.

Generates the rehearsal data (vqa_cp.rehearsal; the json files are those of the real shapes at --scale times
the real counts; the features are written 8-d wide, which leaves the json files unchanged and the TSV small)
unless --data names a folder holding it, then alternates, --repeats times:
- parse: the typed loaders (vqa_cp.raw) on the 4 VQA-CP and the 4 VQA v2 train2014 / val2014 files;
- verify: `verify_raw` with the 4 VQA-CP files as candidates and VQA v2 in place (which parses the same 8
  files, then runs every hard and reported check).
Prints the medians and their ratio (goal: verify within 2x of parse); --write also writes bench/VERIFY.md.
The GloVe line check is timed beside reading the file and counting its newlines.

    python bench/bench_verify.py [--scale 0.05] [--repeats 3] [--data DIR] [--write]
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vqa_cp import raw, verify  # noqa: E402
from vqa_cp.errors import VQAError, run_cli  # noqa: E402
from vqa_cp.files import write_text  # noqa: E402
from vqa_cp.processing import ANSWER_TYPES, GLOVE_FILE  # noqa: E402
from vqa_cp.rehearsal import REHEARSAL_FILE, RehearsalConfig, generate_rehearsal_data  # noqa: E402

V2_FILES = [verify.V2_QUESTIONS["train2014"], verify.V2_QUESTIONS["val2014"], *verify.V2_ANNOTATIONS.values()]
CP_FILES = [*verify.CP_QUESTIONS.values(), *verify.CP_ANNOTATIONS.values()]


def parse_inputs(data: Path) -> int:
    """What the check cannot do without: the 8 files through the typed loaders. Returns the entry count."""
    n = 0
    for name in CP_FILES + V2_FILES:
        loader = raw.load_questions if "questions" in name else (lambda p: raw.load_annotations(p, ANSWER_TYPES))
        n += len(loader(data / name))
    return n


def check(data: Path) -> int:
    verdict = verify.verify_raw({n: data / n for n in CP_FILES}, data, release=False)
    if verdict.refused:
        raise VQAError(f"the rehearsal copy is refused: {next(iter(verdict.refused.values()))}")
    return len(verdict.notes)


def count_lines(path: Path) -> int:
    """The floor of any line check: read the file and count its newlines."""
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b""))


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(data: Path, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"parse": [], "verify": [], "count glove lines": [], "check glove": []}
    glove = data / GLOVE_FILE
    for _ in range(repeats):
        times["parse"].append(timed(lambda: parse_inputs(data)))
        times["verify"].append(timed(lambda: check(data)))
        times["count glove lines"].append(timed(lambda: count_lines(glove)))
        times["check glove"].append(timed(lambda: verify.glove_lines(glove, 300)))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=0.05, help="fraction of the real counts (rehearsal data)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", type=Path, help="a rehearsal folder to use instead of generating one")
    p.add_argument("--write", action="store_true", help="write bench/VERIFY.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_verify_") as tmp:
        data = args.data
        if data is None or not (data / REHEARSAL_FILE).is_file():
            data = data or Path(tmp) / "rehearsal"
            start = time.perf_counter()
            generate_rehearsal_data(data, RehearsalConfig(scale=args.scale, feature_dim=8))
            print(f"generated {data} in {time.perf_counter() - start:.0f} s")
        size = sum((data / n).stat().st_size for n in CP_FILES + V2_FILES)
        medians = run(data, args.repeats)
        glove_mb = (data / GLOVE_FILE).stat().st_size / 1e6
    ratio = medians["verify"] / medians["parse"]
    glove_ratio = medians["check glove"] / medians["count glove lines"]
    lines = [f"# VQA-CP check vs parsing its inputs (rehearsal scale {args.scale})", "",
             f"8 json files, {size / 1e6:.0f} MB; medians of {args.repeats} runs, alternated, one process.", "",
             "| what | median s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in medians.items()]
    lines += ["", f"verify / parse = {ratio:.2f} (goal: at most 2)",
              f"GloVe ({glove_mb:.0f} MB) check / counting its lines = {glove_ratio:.1f} "
              f"({glove_mb / medians['check glove']:.0f} MB/s: the 1 GB glove.6B.300d.txt in about "
              f"{1000 / (glove_mb / medians['check glove']):.0f} s)", "",
              f"peak RSS of the process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB "
              "(generation included; the check holds all 8 files' entries at once)", "",
              f"`python bench/bench_verify.py --scale {args.scale} --repeats {args.repeats} --write`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_text(ROOT / "bench" / "VERIFY.md", text)


if __name__ == "__main__":
    run_cli(main)
