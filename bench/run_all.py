"""Run every benchmark in bench/ and report (machine description + each script's output).

    python bench/run_all.py [--quick] [--write | --output F]
        [--only data,evaluation,step,step_bf16,throughput,verify,import,extraction,toy]

The report goes to the terminal; `--write` replaces the committed bench/RESULTS.md (refused with --quick,
whose smoke-run figures go to `--output F` or the terminal only).

Each script reports medians of several runs and its ratios measured side by side in one process.
Benchmarks are never part of the test suite's pass/fail.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from vqa_cp.errors import VQAError, run_cli  # noqa: E402
from vqa_cp.files import write_text  # noqa: E402

# On a CPU the real-shape throughput run is cut to a few batch-128 steps; its GPU figures need a GPU.
CPU_THROUGHPUT = ["--device", "cpu", "--batch", "128", "--steps", "5", "--warmup", "1", "--images", "2000"]
# name -> (script, full flags, quick flags, what it measures)
BENCHMARKS = {
    "data": ("bench/bench_data.py", ["--images", "300"], ["--images", "60", "--items", "500"],
             "TSV decode MB/s vs a plain base64 loop, TSV -> HDF5, dataset items/s lazy vs cached, peak RSS"),
    "evaluation": ("bench/bench_evaluation.py", [], ["--quick"],
                   "official accuracy on 219,928 questions vs a per-question implementation"),
    "step": ("bench/bench_step.py", [], ["--quick"],
             "training step time per mode, with and without the regulariser; trunk reuse vs second trunk pass; "
             "matrix-product work per step"),
    "step_bf16": ("bench/bench_step.py", ["--part", "1", "--amp"], ["--part", "1", "--amp", "--quick"],
                  "part 1 of the step benchmark under bfloat16 autocast (main.py --amp)"),
    "throughput": ("bench/bench_throughput.py", [] if torch.cuda.is_available() else CPU_THROUGHPUT, ["--quick"],
                   "samples/s and seconds per full epoch at the real shapes (GPU figures need a GPU)"),
    "verify": ("bench/bench_verify.py", ["--scale", "0.1", "--repeats", "5"], ["--scale", "0.02", "--repeats", "1"],
               "the VQA-CP copy check against merely parsing its 8 input files; the GloVe check"),
    "import": ("bench/bench_import.py", ["--repeats", "4"], ["--scale", "0.002", "--repeats", "1"],
               "each feature form's import against merely reading (and base64-decoding) its files"),
    "extraction": ("bench/bench_extract_features.py", [], ["--images", "2", "--no-amp"],
                   "the extractor: images/s at batch 1 and 8, the time by stage, bf16 against float32"),
    "toy": ("bench/bench_toy.py", ["--flags", "--epochs 8 --batch_size 64 --num_hid 256", "--reg", "1e-8:ent"],
            ["--seeds", "0", "--no-timing", "--out", str(Path(tempfile.gettempdir()) / "TOY_RESULTS_quick.md")],
            "the toy benchmark's accuracy table (3 seeds) and `main.py --toy` time"),
}


def machine() -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kb = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{mem}, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, torch threads {torch.get_num_threads()}")


def main(argv: list[str]) -> Path | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (minutes, not tens of minutes)")
    p.add_argument("--only", default=",".join(BENCHMARKS))
    p.add_argument("--write", action="store_true", help="write bench/RESULTS.md (a full run only)")
    p.add_argument("--output", default=None, help="write the report to this file instead")
    args = p.parse_args(argv)
    if args.write and args.output:
        raise VQAError("give --write (bench/RESULTS.md) or --output PATH, not both")
    if args.write and args.quick:
        raise VQAError("--quick figures never replace the committed bench/RESULTS.md: use --output PATH")
    out = Path(args.output) if args.output else ROOT / "bench" / "RESULTS.md" if args.write else None
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise VQAError(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sections = [f"# Benchmark results\n\n{datetime.date.today()}; {machine()}.\n\n"
                f"Command: `python bench/run_all.py{' --quick' if args.quick else ' --write'}`. Figures are medians; "
                "ratios are measured side by side in one process. Times on a shared machine vary; compare "
                "ratios, not absolute CPU times.\n"]
    failed = []
    for name in names:
        script, full, quick, what = BENCHMARKS[name]
        cmd = [sys.executable, script, *(quick if args.quick else full)]
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr)
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        took = time.time() - start
        body = "\n".join(line for line in proc.stdout.splitlines() if "\r" not in line).strip()
        status = "" if proc.returncode == 0 else f" — FAILED (exit {proc.returncode})"
        if proc.returncode:
            failed.append(name)
            body += "\n" + "\n".join(proc.stderr.strip().splitlines()[-5:])
        sections.append(f"\n## {name}{status}\n\n{what}. `{' '.join(cmd[1:])}`, {took:.0f} s.\n\n```\n{body}\n```\n")
        print(body, file=sys.stderr)
    report = "".join(sections)
    if out is None:
        print(report)
    else:
        write_text(out, report)
        print(f"wrote {out}", file=sys.stderr)
    if failed:
        raise VQAError(f"benchmarks failed: {', '.join(failed)}" + (f" (see {out})" if out else ""))
    return out


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
