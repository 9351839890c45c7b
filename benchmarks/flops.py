"""How far training the `optimizers` model is from what this CPU's matrix multiply reaches.

    python -m benchmarks.flops                            # ~1 min
    python -m benchmarks.flops --steps 3000 --repeats 3 --json out.json

The model: 784 -> 100 -> 100 -> 100 -> 10 (3 x Dense(100) ReLU, softmax), batch 32, Adam.
A training step's matrix multiplies: forward x W (4), weight gradients x^T dy (4) and input
gradients dy W^T (3, none for the input layer): 2 x (3 x 99,400 - 78,400) x 32 = 14.1 MFLOP
a step; every other op (bias, ReLU, softmax, loss, Adam's update, the metric) is linear in
the sizes and ignored in the count. Timed, each the median of --repeats:

  matmul       those 11 matrix multiplies alone, --steps times inside one tf.function
               (tf.while_loop): the most TensorFlow's matmul gets out of this CPU for these shapes
  peak         one 2048 x 2048 x 2048 matmul: the CPU's large-matrix ceiling
  fit spe=128  model.fit on a cached, prefetched tf.data pipeline, 128 steps per compiled call
  fit spe=1    the same with Keras's default loop: one Python round trip per step

Achieved FLOP/s = 14.1 MFLOP x steps / seconds. The gaps are the profile: fit spe=128
against matmul is what the other ops (elementwise, Adam, metrics) cost in-graph; spe=1
against spe=128 is the per-step dispatch from Python.
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import figure, finish, spread

BATCH, LAYERS = 32, (784, 100, 100, 100, 10)
STEP_FLOPS = 2 * BATCH * (3 * sum(a * b for a, b in zip(LAYERS, LAYERS[1:], strict=False)) - LAYERS[0] * LAYERS[1])


def matmul_chain(steps: int) -> float:
    """Seconds for `steps` rounds of the step's 11 matrix multiplies, in one graph."""
    import tensorflow as tf  # noqa: PLC0415

    weights = [tf.random.normal((a, b)) for a, b in zip(LAYERS, LAYERS[1:], strict=False)]
    x = tf.random.normal((BATCH, LAYERS[0]))

    @tf.function
    def run(x):
        def body(i, total):
            activations = [x]
            for w in weights:
                activations.append(tf.matmul(activations[-1], w))
            dy = activations[-1] * 1e-3
            for index in range(len(weights) - 1, -1, -1):
                total += tf.reduce_sum(tf.matmul(activations[index], dy, transpose_a=True)[0, :1])
                if index:
                    dy = tf.matmul(dy, weights[index], transpose_b=True)
            return i + 1, total
        return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), tf.constant(0.0)))[1]

    run(x).numpy()  # trace
    started = time.perf_counter()
    run(x).numpy()
    return time.perf_counter() - started


def peak_flops() -> float:
    import tensorflow as tf  # noqa: PLC0415

    a = tf.random.normal((2048, 2048))
    matmul = tf.function(lambda a: tf.reduce_sum(tf.matmul(a, a)))
    matmul(a).numpy()
    started = time.perf_counter()
    for _ in range(5):
        matmul(a).numpy()
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - started)


def fit_seconds(steps: int, steps_per_execution: int) -> float:
    """Seconds per `steps` training steps of model.fit (after a warm-up epoch that traces)."""
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    keras.utils.set_random_seed(42)
    rng = np.random.default_rng(42)
    x = rng.random((steps * BATCH, LAYERS[0]), dtype=np.float32)
    y = rng.integers(0, 10, steps * BATCH)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache().repeat().prefetch(tf.data.AUTOTUNE)
    model = keras.Sequential([keras.Input((LAYERS[0],)),
                              *(keras.layers.Dense(units, activation="relu", kernel_initializer="he_normal")
                                for units in LAYERS[1:-1]),
                              keras.layers.Dense(LAYERS[-1], activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    started = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2048, help="training steps timed per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every measurement")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    began = time.perf_counter()
    seconds = {"matmul": [], "fit_spe128": [], "fit_spe1": []}
    peaks = []
    for repeat in range(args.repeats):
        seconds["matmul"].append(matmul_chain(args.steps))
        seconds["fit_spe128"].append(fit_seconds(args.steps, 128))
        seconds["fit_spe1"].append(fit_seconds(args.steps, 1))
        peaks.append(peak_flops())
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{name} {STEP_FLOPS * args.steps / values[-1] / 1e9:.1f} GFLOP/s" for name, values in seconds.items())
            + f", peak {peaks[-1] / 1e9:.1f} GFLOP/s", flush=True)
    flops = {name: [STEP_FLOPS * args.steps / s for s in values] for name, values in seconds.items()}
    per_step = {name: spread([s / args.steps * 1e6 for s in values]) for name, values in seconds.items()}
    median = {name: spread(values)["median"] for name, values in flops.items()}
    peak = spread(peaks)["median"]
    profile = (f"a step takes {per_step['matmul']['median']:.0f} us of matrix multiplies, "
               f"{per_step['fit_spe128']['median']:.0f} us in model.fit at spe=128 (the other ops: "
               f"{per_step['fit_spe128']['median'] - per_step['matmul']['median']:.0f} us) and "
               f"{per_step['fit_spe1']['median']:.0f} us at spe=1 (Python dispatch: "
               f"{per_step['fit_spe1']['median'] - per_step['fit_spe128']['median']:.0f} us)")
    rows = [
        figure("training FLOP/s, model.fit spe=128 vs TensorFlow matmul on the same shapes",
               [f / m for f, m in zip(flops["fit_spe128"], flops["matmul"], strict=True)], None,
               f"{median['fit_spe128'] / 1e9:.1f} vs {median['matmul'] / 1e9:.1f} GFLOP/s; {profile}"),
        figure("training FLOP/s, model.fit spe=1 (Keras default) vs TensorFlow matmul on the same shapes",
               [f / m for f, m in zip(flops["fit_spe1"], flops["matmul"], strict=True)], None,
               f"{median['fit_spe1'] / 1e9:.1f} GFLOP/s; the CPU's large-matmul peak: {peak / 1e9:.0f} GFLOP/s "
               f"(these shapes reach {median['matmul'] / peak:.0%} of it)"),
    ]
    finish("flops", args.json, rows, settings=vars(args) | {"json": None}, step_flops=STEP_FLOPS, seconds=seconds,
           peak_flops=peaks, per_step_us=per_step, wall_s=time.perf_counter() - began)


if __name__ == "__main__":
    main()
