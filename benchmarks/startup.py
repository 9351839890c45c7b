"""Start-up: the command line's answers without TensorFlow, and command to first training step.

    python -m benchmarks.startup                          # 3 repeats: ~2 min
    python -m benchmarks.startup --repeats 3 --json out.json

  --help, --cfg job    `python -m src.train --help` / `--cfg job`, wall time, against
                       `python -c "import tensorflow"` (what they would cost if they loaded
                       it); and, checked in-process, that neither imports TensorFlow, Keras
                       or MLflow.
  first step           from launching the command to the end of the first training step:
                       `python -m src.train experiment=optimizers optimizer=adam` (into an
                       existing MLflow store) against a bare Keras script training the same
                       model on the same arrays (benchmarks/first_step.py). Both full data.
Commands alternate, repeat after repeat. Targets: none in the issue for the ratios; the
import check must hold.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import CHILD_ENV, REPO, figure, finish, spread

PROBE = """
import runpy, sys
sys.argv = ["src.train", *sys.argv[1:]]
try:
    runpy.run_module("src.train", run_name="__main__")
except SystemExit:
    pass
print("imported:", ",".join(m for m in ("tensorflow", "keras", "mlflow") if m in sys.modules), file=sys.stderr)
"""


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=CHILD_ENV, check=True, capture_output=True)
    return time.perf_counter() - started


def heavy_imports(argument: str) -> str:
    """What `python -m src.train <argument>` imports of TensorFlow, Keras and MLflow (empty: none)."""
    result = subprocess.run([sys.executable, "-c", PROBE, argument], cwd=REPO, env=CHILD_ENV, capture_output=True,
                            text=True, check=True)
    return result.stderr.strip().splitlines()[-1].removeprefix("imported:")


def first_step(side: str, arguments: list[str], folder: Path) -> float:
    stamp = folder / "stamp"
    stamp.unlink(missing_ok=True)
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "benchmarks.first_step", str(stamp), side, *arguments],
                            cwd=REPO, env=CHILD_ENV, capture_output=True, text=True)
    if not stamp.is_file():
        raise SystemExit(f"{side}: no first step (exit {result.returncode}): {result.stderr[-1500:]}")
    return float(stamp.read_text()) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every command")
    parser.add_argument("--npz", type=Path, default=REPO / "data" / "prepared" / "fashion_mnist.npz",
                        help="the prepared Fashion-MNIST both sides train on")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    began = time.perf_counter()
    python = sys.executable
    imports = {argument: heavy_imports(argument) for argument in ("--help", "--cfg=job")}
    npz = args.npz.resolve()
    times = {"help": [], "cfg": [], "import_tf": [], "ours": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as folder:
        store = Path(folder) / "mlflow.db"
        ours = ["experiment=optimizers", "optimizer=adam", "name=bench", "force=true", f"data.path={npz}",
                f"tracking.uri=sqlite:///{store}",
                f"state_dir={folder}/state", f"hydra.run.dir={folder}/run"]
        subprocess.run([python, "-c", f"from mlflow.tracking import MlflowClient; "
                        f"MlflowClient('sqlite:///{store}').search_experiments()"], env=CHILD_ENV, check=True,
                       capture_output=True)  # the store exists, as it does for a user after the first run
        for repeat in range(args.repeats):
            times["help"].append(timed([python, "-m", "src.train", "--help"]))
            times["cfg"].append(timed([python, "-m", "src.train", "--cfg", "job"]))
            times["import_tf"].append(timed([python, "-c", "import tensorflow"]))
            times["ours"].append(first_step("ours", ours, Path(folder)))
            times["bare"].append(first_step("bare", [str(npz)], Path(folder)))
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{name} {values[-1]:.2f} s" for name, values in times.items()), flush=True)
    stats = {name: spread(values) for name, values in times.items()}
    clean = not any(imports.values())
    rows = [
        figure("`--help` and `--cfg job` wall time vs `import tensorflow` alone (lower is better)",
               [(h + c) / 2 / t for h, c, t in zip(times["help"], times["cfg"], times["import_tf"], strict=True)],
               None, f"--help {stats['help']['median']:.2f} s, --cfg job {stats['cfg']['median']:.2f} s, import "
               f"tensorflow {stats['import_tf']['median']:.2f} s; TensorFlow, Keras, MLflow imported by --help: "
               f"{imports['--help'] or 'none'}, by --cfg job: {imports['--cfg=job'] or 'none'}",
               higher_is_better=False),
        figure("command to first training step: `python -m src.train` vs a bare Keras script (lower is better)",
               [o / b for o, b in zip(times["ours"], times["bare"], strict=True)], None,
               f"{stats['ours']['median']:.2f} s vs {stats['bare']['median']:.2f} s", higher_is_better=False),
    ]
    rows[0]["met"] = clean  # the one hard requirement: no heavy import for --help and --cfg job
    finish("startup", args.json, rows, settings={"repeats": args.repeats}, times=times, imports=imports,
           seconds=time.perf_counter() - began)


if __name__ == "__main__":
    main()
