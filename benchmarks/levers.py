"""Two training levers on the `optimizers` model: steps_per_execution and bfloat16.

    python -m benchmarks.levers                          # 3 epochs x 3 repeats on 20,000 images: ~2 min
    python -m benchmarks.levers --epochs 3 --repeats 3 --train-size 20000 --spe 32 --json out.json

The model is experiment=optimizers with Adam (3 x Dense(100) ReLU/He, batch 32: the book's
small-batch setting), trained by src.engine.fit_and_evaluate exactly as a pipeline job is
(diagnostics, resume backup and all), without MLflow. Four arms alternate in one process,
repeat after repeat, so machine noise hits them all:

  default       steps_per_execution=1, float32    (Keras's default loop; the config's default is 32)
  spe           steps_per_execution=--spe         (batches per compiled call)
  bf16          precision=mixed_bfloat16          (AMX on this CPU)
  spe+bf16      both

Throughput: training images / epoch time (steps + validation), median over epochs 2..E
(epoch 1 traces the graph). Targets (the issue): spe >= 2x the default's samples/s with the
same final metrics; bf16's speed and accuracy are reported against float32, with no target.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import REPO, figure, finish, spread
from src.config import compose

SPE_TARGET = 2.0


def arms(spe: int) -> dict[str, list[str]]:
    """Each arm's overrides, spelled out: the config's own default is steps_per_execution=32."""
    loop, many, bf16 = "steps_per_execution=1", f"steps_per_execution={spe}", "precision=mixed_bfloat16"
    return {"default": [loop], "spe": [many], "bf16": [loop, bf16], "spe+bf16": [many, bf16]}


def one_run(config: dict, data) -> dict:
    from src.engine import fit_and_evaluate  # noqa: PLC0415
    from src.resume import ResumeState  # noqa: PLC0415

    epochs = []
    with tempfile.TemporaryDirectory(prefix="bench-levers-") as folder:
        result = fit_and_evaluate(config, data, ResumeState(Path(folder)), lambda step, logs: epochs.append(logs)
                                  if "epoch_time_s" in logs else None, Path(folder))  # not the diagnostics at step 0
    seconds = statistics.median(logs["epoch_time_s"] for logs in epochs[1:])
    return {"samples_per_s": len(data.split("train")[0]) / seconds, "epoch_s": seconds,
            "val_accuracy": epochs[-1]["val_accuracy"], "val_loss": epochs[-1]["val_loss"],
            "test_accuracy": result["test_accuracy"]}


def measure(epochs: int, repeats: int, train_size: int, spe: int) -> dict[str, list[dict]]:
    from src.data.load import load_prepared, reshape_splits  # noqa: PLC0415

    base = ["experiment=optimizers", "optimizer=adam", "seed=42", f"epochs={epochs}", f"data.train_size={train_size}"]
    configs = {arm: compose(base + extra) for arm, extra in arms(spe).items()}
    first = configs["default"]
    data = reshape_splits(load_prepared(REPO / first["data"]["path"]), train_size, first["validation_split"])
    runs = {arm: [] for arm in configs}
    for repeat in range(repeats):
        for arm, config in configs.items():
            runs[arm].append(one_run(config, data))
        print(f"repeat {repeat + 1}/{repeats}: " + ", ".join(
            f"{arm} {values[-1]['samples_per_s']:,.0f}/s" for arm, values in runs.items()), flush=True)
    return runs


def summarise(runs: dict[str, list[dict]], spe: int) -> list[dict]:
    """Ratios per repeat (arm / default of the same repeat), and the metric differences."""
    def ratios(arm: str) -> list[float]:
        return [run["samples_per_s"] / base["samples_per_s"] for run, base in zip(runs[arm], runs["default"],
                                                                                    strict=True)]

    def gap(arm: str, metric: str) -> float:
        return max(abs(run[metric] - base[metric]) for run, base in zip(runs[arm], runs["default"], strict=True))

    def accuracy(arm: str) -> str:
        return (f"val_accuracy {statistics.median(r['val_accuracy'] for r in runs[arm]):.4f} vs "
                f"{statistics.median(r['val_accuracy'] for r in runs['default']):.4f} (largest gap "
                f"{gap(arm, 'val_accuracy') * 100:.2f} pts), test gap {gap(arm, 'test_accuracy') * 100:.2f} pts")

    default = spread([run["samples_per_s"] for run in runs["default"]])
    return [
        figure(f"steps_per_execution={spe} vs 1: samples/s (batch 32, optimizers model)", ratios("spe"), SPE_TARGET,
               f"{statistics.median(r['samples_per_s'] for r in runs['spe']):,.0f} vs {default['median']:,.0f} "
               f"samples/s; {accuracy('spe')}"),
        figure("mixed_bfloat16 vs float32: samples/s (batch 32, optimizers model)", ratios("bf16"), None,
               f"{statistics.median(r['samples_per_s'] for r in runs['bf16']):,.0f} samples/s; {accuracy('bf16')}"),
        figure(f"steps_per_execution={spe} + mixed_bfloat16 vs neither: samples/s", ratios("spe+bf16"), None,
               f"{statistics.median(r['samples_per_s'] for r in runs['spe+bf16']):,.0f} samples/s; "
               f"{accuracy('spe+bf16')}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, >= 2 (epoch 1 is not timed)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the four arms")
    parser.add_argument("--train-size", type=int, default=20000, help="first N training images")
    parser.add_argument("--spe", type=int, default=32, help="steps_per_execution of the spe arms")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.epochs < 2 or args.repeats < 1:
        parser.error("--epochs must be >= 2 and --repeats >= 1")
    began = time.perf_counter()
    runs = measure(args.epochs, args.repeats, args.train_size, args.spe)
    figures = summarise(runs, args.spe)
    finish("levers", args.json, figures, settings=vars(args) | {"json": None}, runs=runs,
           seconds=time.perf_counter() - began)


if __name__ == "__main__":
    main()
