"""Child process of benchmarks.startup: run a training command up to the end of its first
training step, write the wall-clock time then to a file, and exit at once.

    python -m benchmarks.first_step <stamp file> ours <src.train overrides...>
    python -m benchmarks.first_step <stamp file> bare <prepared .npz>

ours: `python -m src.train <overrides>` as a user types it (Hydra, validation, MLflow,
data checks, diagnostics: everything before the first step). bare: the notebook way, a
plain Keras script training the same model (experiment=optimizers with Adam) on the same
arrays. Both wrap keras.Model.fit the same way to stamp the first step's end.
"""

import os
import sys
import time
from pathlib import Path


def stamp_first_step(stamp: Path) -> None:
    """From now on, every fit ends the process after its first training step, stamping the time."""
    import keras  # noqa: PLC0415

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamp.write_text(repr(time.time()))
            os._exit(0)

    original = keras.Model.fit

    def fit(model, *args, callbacks=None, **kwargs):
        return original(model, *args, callbacks=[*(callbacks or []), FirstStep()], **kwargs)

    keras.Model.fit = fit


def bare(npz: str) -> None:
    """The optimizers model trained the notebook way: numpy arrays, x/255, model.fit."""
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    with np.load(npz) as arrays:
        (x, y), (x_valid, y_valid) = ((arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "valid"))
    x, x_valid = (images.reshape(len(images), -1).astype("float32") / 255 for images in (x, x_valid))
    keras.utils.set_random_seed(42)
    model = keras.Sequential([keras.Input((x.shape[1],)),
                              *(keras.layers.Dense(100, activation="relu", kernel_initializer="he_normal")
                                for _ in range(3)),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=32, validation_data=(x_valid, y_valid), verbose=0)


def main(argv: list[str]) -> None:
    stamp, side, rest = Path(argv[0]), argv[1], argv[2:]
    stamp_first_step(stamp)
    if side == "bare":
        bare(rest[0])
    else:
        import runpy  # noqa: PLC0415

        sys.argv = ["src.train", *rest]
        runpy.run_module("src.train", run_name="__main__")  # as `python -m src.train` (Hydra finds conf/ so)
    raise SystemExit(f"{side}: no training step ran")


if __name__ == "__main__":
    main(sys.argv[1:])
