"""The `pretrain_base` stage: a MobileNetV2 base trained here, standing in for ImageNet weights.

    python -m src.pretrained.pretrain <prepared cifar10 .npz> <out .weights.h5>   (params: pretrain)

Machines without internet cannot fetch Keras's ImageNet weights, and a randomly
initialised frozen base yields features no head can learn from (chance accuracy). This
stage trains the base, from scratch, on CIFAR-10 training images that the transfer
experiment never sees: the full training file (in its prepared order) minus its first
`skip_first` images, which are the experiment's 2,500 (its held-out 250 included); the
test set is untouched. Inputs are scaled to [-1, 1] like ImageNet's MobileNetV2, so feeding
x/255 to it shows the same mismatch as with the real weights. Written: the base's weights
(for model.weights=<path>) and a JSON beside them with the settings and the accuracy reached.
"""

import json
import os
import sys
import time
from pathlib import Path

import yaml

from src.cli import run_main
from src.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def pretrain(prepared_path: Path, out: Path, settings: dict) -> dict:
    import keras  # noqa: PLC0415 (TensorFlow loads only when the stage runs)
    import numpy as np  # noqa: PLC0415

    from src.data.load import Prepared, load_prepared, make_datasets, steps_per_epoch  # noqa: PLC0415

    data = load_prepared(prepared_path)
    parts = ("valid", "train") if data.meta["split"]["valid_position"] == "first" else ("train", "valid")
    x = np.concatenate([data.split(part)[0] for part in parts])  # the full training file, prepared order
    y = np.concatenate([data.split(part)[1] for part in parts])
    skip, held_out = settings["skip_first"], settings["held_out"]
    source = Prepared({"x_train": x[skip:-held_out], "y_train": y[skip:-held_out], "x_valid": x[-held_out:],
                       "y_valid": y[-held_out:], "x_test": x[:0], "y_test": y[:0]}, data.meta, data.path)
    keras.utils.set_random_seed(settings["seed"])
    size = settings["size"]
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=settings["alpha"], include_top=False,
                                          weights=None)
    for layer in base.layers:  # Keras's 0.999 lets the moving statistics lag far behind a short training
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = settings["bn_momentum"]
    images = keras.Input(shape=(size, size, 3))
    model = keras.Model(images, keras.layers.Dense(len(data.class_names), activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(base(images))))
    model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    batch, epochs = settings["batch_size"], settings["epochs"]
    pipelines = make_datasets(source, batch, scale="symmetric", resize=(size, size), seed=settings["seed"],
                              epochs=epochs)
    started = time.perf_counter()
    history = model.fit(pipelines["train"], epochs=epochs, steps_per_epoch=steps_per_epoch(len(source.split("train")[0]),
                                                                                             batch),
                        validation_data=pipelines["valid"], verbose=2).history
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".partial.{out.name}")  # Keras wants the .weights.h5 ending
    base.save_weights(partial)
    os.replace(partial, out)
    record = {"settings": settings, "source_images": len(source.split("train")[0]), "held_out": held_out,
              "val_accuracy": history["val_accuracy"], "train_time_s": round(time.perf_counter() - started, 1),
              "keras": keras.__version__}
    partial = out.with_name(f".partial.{out.name}.json")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, out.with_name(out.name.removesuffix(".weights.h5") + ".json"))
    return record


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise ConfigError("usage: python -m src.pretrained.pretrain <prepared cifar10 .npz> <out .weights.h5>")
    settings = yaml.safe_load((REPO / "params.yaml").read_text())["pretrain"]
    record = pretrain(Path(argv[0]), Path(argv[1]), settings)
    print(f"base pretrained on {record['source_images']} images: val_accuracy {record['val_accuracy'][-1]:.4f} "
          f"-> {argv[1]}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
