"""`make bench`: every benchmark, one after another, then reports/benchmarks.md and .json.

    python -m benchmarks.report                     # all but the two OPTIONAL ones: ~45 minutes on 2 cores
    python -m benchmarks.report --only levers flops # some; the others' last results stay in the report
    python -m benchmarks.report --quick             # fewer repeats and steps: a smoke run (~5 min)
    python -m benchmarks.report --only headline_chapter
                                                    # every Fashion-MNIST experiment, seed 42, two ways (~45 min)
    python -m benchmarks.report --only headline_seed_notebook_stage
                                                    # seed_notebook's whole stage, 60 jobs, two ways (~16 min)
    python -m benchmarks.report --all               # every one: the whole report from one run on one machine (~100 min)

Each benchmark runs in a fresh process (TensorFlow's threads and precision are per
process) and measures its sides alternately in that one run, so every figure is a ratio
measured side by side; repeats give its spread (median, min, max). The report is written
to a temporary file and renamed, so a failed benchmark leaves the last good report whole.
"""

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import CHILD_ENV, REPO, machine, value, verdict, write_json
from src.paths import write_text

# name -> (module, arguments for the full run, arguments for --quick)
BENCHMARKS = {
    "levers": ("levers", ["--epochs", "3", "--repeats", "3", "--train-size", "20000"],
               ["--epochs", "2", "--repeats", "1", "--train-size", "3000"]),
    "sweep": ("sweep", ["--repeats", "2", "--epochs", "2", "--train-size", "20000"],
              ["--repeats", "1", "--epochs", "1", "--train-size", "2000"]),
    "startup": ("startup", ["--repeats", "3"], ["--repeats", "1"]),
    "flops": ("flops", ["--repeats", "3"], ["--repeats", "1", "--steps", "512"]),
    "train_overhead": ("train_overhead", ["--epochs", "4", "--repeats", "5", "--train-size", "20000", "--jobs", "5"],
                       ["--epochs", "2", "--repeats", "1", "--train-size", "3000", "--jobs", "2"]),
    "feature_cache": ("feature_cache", ["--epochs", "10", "--repeats", "2"], ["--epochs", "2", "--repeats", "1"]),
    "pruning": ("pruning", ["--trials", "20", "--epochs", "10", "--train-size", "20000", "--repeats", "2"],
                ["--trials", "5", "--epochs", "3", "--train-size", "2000", "--repeats", "1"]),
    "headline": ("headline", ["--train-size", "20000"], ["--experiments", "seed_notebook", "--train-size", "2000"]),
    "headline_init_activation": ("headline", ["--experiments", "init_activation", "--seeds", "42", "--train-size",
                                              "20000", "--ways", "chapter,repro", "--repeats", "2", "--target", "2"],
                                 # its own 10,000 images: standardised on fewer, selu + he_normal diverges
                                 ["--experiments", "init_activation", "--seeds", "42", "--train-size", "0",
                                  "--target", "2"]),
    "headline_seed_notebook": ("headline", ["--experiments", "seed_notebook", "--seeds", "42", "--train-size",
                                            "20000", "--ways", "chapter,repro", "--repeats", "3", "--target", "1.5"],
                               ["--experiments", "seed_notebook", "--seeds", "42", "--train-size", "2000",
                                "--target", "1.5"]),
    # the whole stage as dvc repro runs it (3 models x 20 seeds): the seeds of a model share its compiled graph
    "headline_seed_notebook_stage": ("headline", ["--experiments", "seed_notebook", "--seeds", "all", "--train-size",
                                                  "20000", "--ways", "chapter,repro", "--repeats", "1", "--target",
                                                  "1.5"],
                                     ["--experiments", "seed_notebook", "--seeds", "42,43", "--train-size", "2000",
                                      "--target", "1.5"]),
    "headline_chapter": ("headline", ["--experiments", "all", "--train-size", "20000", "--seeds", "42",
                                      "--ways", "chapter,repro", "--repeats", "1", "--target", "3"],
                         ["--experiments", "all", "--train-size", "1000", "--seeds", "42"]),
}
# Not in the default run (headline_chapter: the longest benchmark even at one round, the notebook side most of it;
# the report's last table gives each one's wall time; a second round doubles it, too long for --all to fit in a
# working session): --only <name> or --all; the report keeps their last results. Plain dvc repro's process per
# stage (--ways stages) is left out of it: another 20 minutes, and no target.
OPTIONAL = ("headline_seed_notebook_stage", "headline_chapter")


class BenchmarkFailed(Exception):
    """A benchmark's process failed: the others still run, and the report keeps its last result."""


def run(name: str, module: str, arguments: list[str], folder: Path) -> dict:
    out = folder / f"{name}.json"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *arguments, "--json", str(out)], cwd=REPO,
                            env=CHILD_ENV, capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        raise BenchmarkFailed(f"error: benchmark {name} failed (exit {result.returncode}): "
                         f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no output'}")
    measured = {**json.loads(out.read_text()), "wall_s": time.perf_counter() - started, "arguments": arguments}
    for row in measured["figures"]:
        print(f"  {row['name']}: {value(row)} ({verdict(row)})", flush=True)
    return measured


def cpu(about: dict) -> str:
    def has(feature: str) -> str:
        return "yes" if about[feature] else "no"

    return f"{about['cpu']} (AVX-512 {has('avx512')}, AMX-BF16 {has('amx_bf16')})"


def markdown(results: dict[str, dict], about: dict, quick: bool) -> str:
    lines = ["# Benchmarks", "",
             f"Made by `make bench` (`python -m benchmarks.report{' --quick' if quick else ''}`) on "
             f"{about['date']}: {cpu(about)}, {about['cores']} cores, {about['memory_gib']} GiB; Python "
             f"{about['python']}, {about['platform']}; results kept from earlier runs name their own date and "
             "machine (last table). Every figure is a ratio of two sides measured alternately in "
             "one run; median (min, max) over the repeats. Shared machines are noisy: compare ratios, not seconds.",
             "", "| benchmark | figure | ratio, median (min, max) | repeats | target | details |",
             "|---|---|---|---|---|---|"]
    for name, result in results.items():
        for row in result["figures"]:
            lines.append(f"| `{name}` | {row['name']} | {value(row)} ({row['min']:.2f}, {row['max']:.2f}) | "
                         f"{row['n']} | {verdict(row)} | {row['detail']} |")
    lines += ["", "| benchmark | arguments | wall time | measured on |", "|---|---|---|---|"]
    lines += [f"| `{name}` | `{' '.join(result['arguments'])}` | {result['wall_s']:.0f} s | {result['date']}, "
              f"{cpu(result.get('machine', about))} |" for name, result in results.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS),
                        default=[name for name in BENCHMARKS if name not in OPTIONAL])
    parser.add_argument("--all", action="store_true", help=f"every benchmark, {', '.join(OPTIONAL)} too")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps: checks that all runs")
    parser.add_argument("--out", type=Path, default=REPO / "reports", help="where benchmarks.md and .json go")
    args = parser.parse_args()
    about = {**machine(), "date": datetime.date.today().isoformat()}
    results, failures = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        for name in list(BENCHMARKS) if args.all else args.only:
            print(f"{name}: running", flush=True)
            module, full, quick = BENCHMARKS[name]
            try:
                results[name] = run(name, module, quick if args.quick else full, Path(folder))
            except BenchmarkFailed as failure:  # the hour the others took is not thrown away with it
                print(failure, flush=True)
                failures.append(str(failure))
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "benchmarks.json"
    if previous.is_file():  # keep the last results of the benchmarks not run now
        kept = json.loads(previous.read_text())
        if not kept.get("quick") and not args.quick:
            older = {name: kept["results"][name] for name in BENCHMARKS
                     if name in kept["results"] and name not in results}
            results = {name: result | {"date": result.get("date", kept["machine"]["date"]),
                                       "machine": result.get("machine", kept["machine"])}
                       for name, result in older.items()} | results
    for result in results.values():  # machines differ between sessions: each result names its own
        result.setdefault("date", about["date"])
        result.setdefault("machine", about)
    write_json(previous, {"machine": about, "quick": args.quick, "results": results})
    write_text(args.out / "benchmarks.md", markdown(results, about, args.quick))
    print(f"wrote {args.out / 'benchmarks.md'} and benchmarks.json "
          f"({sum(result['wall_s'] for result in results.values()):.0f} s)")
    if failures:
        raise SystemExit("\n".join(failures))


if __name__ == "__main__":
    main()
