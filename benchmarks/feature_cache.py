"""Training the head on cached pooled features against running the frozen base every epoch.

    python -m benchmarks.feature_cache                        # 10 head epochs x 3 repeats: ~6 min on 2 cores
    python -m benchmarks.feature_cache --epochs 10 --repeats 3 --weights none --json out.json

Target (the issue): at 10 head epochs, at least 5x faster with the cache, with the same
validation accuracy within 1 point. The config is experiment=mobilenet_v2_cifar10 (2,500
images at 96 x 96, batch 16, Adam, seed 42), phase 1 only, with the base's weights from
--weights (default: the pretrain_base stage's file, the stand-in for ImageNet here).

  base every epoch   model.feature_cache=null: each epoch runs the frozen base on every image
  cached (miss)      a fresh cache folder each time: the features are computed once, then
                     the head trains on them: what a first run costs
  cached (hit)       the features read back from that folder: what a rerun or a sweep's
                     other seeds cost

Timed: training, i.e. the feature computation (train and validation splits) plus every
epoch with its validation pass; the test-set evaluation after it is the same work on both
sides and is shown apart. Runs alternate in one process (direct, miss, hit, direct, ...)
so machine noise hits all three; the ratio is median(direct) / median(cached).
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import REPO, figure, finish
from src.config import compose

TARGET = 5.0
DEFAULT_WEIGHTS = "models/mobilenet_v2_0.35_96_cifar10.weights.h5"


def one_run(config: dict, data, cache: Path | None) -> dict:
    """Phase 1 of a run; its training time (features + epochs), test-evaluation time and val accuracy."""
    from src.pretrained.engine import fit_and_evaluate  # noqa: PLC0415
    from src.resume import ResumeState  # noqa: PLC0415

    config = {**config, "model": {**config["model"], "feature_cache": None if cache is None else str(cache)}}
    epochs = []
    with tempfile.TemporaryDirectory(prefix="bench-state-") as state:
        started = time.perf_counter()
        result = fit_and_evaluate(config, data, ResumeState(Path(state)), lambda step, logs: epochs.append(logs),
                                  Path(state))
        total = time.perf_counter() - started
    training = result.get("feature_time_s", 0.0) + sum(logs["epoch_time_s"] for logs in epochs)
    return {"training_s": training, "total_s": total, "val_accuracy": epochs[-1]["val_accuracy"],
            "test_accuracy": result["test_accuracy"], "cache_hit": result.get("feature_cache_hit")}


def measure(epochs: int, repeats: int, weights: str) -> dict[str, list[dict]]:
    from src.data.load import load_prepared, reshape_splits  # noqa: PLC0415

    config = compose(["experiment=mobilenet_v2_cifar10", f"epochs={epochs}", f"model.weights={weights}",
                      "model.fine_tune_epochs=0"])
    data = reshape_splits(load_prepared(REPO / config["data"]["path"]), config["data"]["train_size"],
                          config["validation_split"])
    runs = {"direct": [], "miss": [], "hit": []}
    for repeat in range(repeats):
        runs["direct"].append(one_run(config, data, None))
        folder = Path(tempfile.mkdtemp(prefix="bench-features-"))
        try:
            runs["miss"].append(one_run(config, data, folder))
            runs["hit"].append(one_run(config, data, folder))
        finally:
            shutil.rmtree(folder)
        print(f"repeat {repeat + 1}/{repeats}: " + ", ".join(
            f"{side} {values[-1]['training_s']:.1f} s" for side, values in runs.items()), flush=True)
    return runs


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="head epochs per run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (direct, miss, hit)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="model.weights: a file, imagenet or none")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    runs = measure(args.epochs, args.repeats, args.weights)
    direct = statistics.median(run["training_s"] for run in runs["direct"])
    print(f"\n{args.epochs} head epochs, {args.repeats} repeats, weights {args.weights}; training seconds, "
          "median (min, max):")
    for side, label in (("direct", "base every epoch"), ("miss", "cached, first run"), ("hit", "cached, rerun")):
        times = [run["training_s"] for run in runs[side]]
        accuracy = statistics.median(run["val_accuracy"] for run in runs[side])
        rest = statistics.median(run["total_s"] - run["training_s"] for run in runs[side])
        print(f"  {label:18} {spread(times)}   speed-up x{direct / statistics.median(times):5.1f}   "
              f"val_accuracy {accuracy:.4f}   build + test evaluation {rest:.1f} s")
    gap = max(abs(run["val_accuracy"] - base["val_accuracy"]) for side in ("miss", "hit")
              for run, base in zip(runs[side], runs["direct"], strict=True))
    cached = statistics.median(run["training_s"] for run in runs["miss"])
    row = figure(f"MobileNetV2 head, {args.epochs} epochs: cached features (first run) vs the frozen base every epoch",
                 [base["training_s"] / run["training_s"]
                  for base, run in zip(runs["direct"], runs["miss"], strict=True)],
                 TARGET, f"training {cached:.1f} s vs {direct:.1f} s; "
                 f"rerun from the cache x{direct / statistics.median(r['training_s'] for r in runs['hit']):.1f}; "
                 f"largest val_accuracy gap {gap * 100:.2f} points (target <= 1)")
    row["met"] = row["met"] and gap <= 0.01
    finish("feature_cache", args.json, [row], settings=vars(args) | {"json": None}, runs=runs)


if __name__ == "__main__":
    main()
