"""Check a composed training config before anything is built, and fingerprint it.

`validate(cfg)` walks the config against RULES: every key must be known, every value of
the right type and range, and a few combinations that cannot work (SELU with Batch
Normalization, MC dropout without dropout, ...) are refused. The first problem found
becomes one ConfigError line that names the key, the value and the fix.
"""

import copy
import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.data import DATASETS
from src.errors import ConfigError
from src.families import FAMILIES
from src.rules import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_PIXELS,
    MAX_SEED,
    boolean,
    choice,
    int_list,
    integer,
    number,
    optional,
    safe_name,
    text,
)

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
CLIPPING_KEYS = ("clipvalue", "clipnorm", "global_clipnorm")
# Keys that change where or how a run is recorded, not what it computes: left out of the hash.
NOT_HASHED = ("name", "tracking", "force", "state_dir", "threads", "diagnostics")


# -- the schema ---------------------------------------------------------------------------------

DATA = {"name": choice(*DATASETS), "path": text, "scale": choice("none", "unit", "symmetric", "standard"),
        "flatten": boolean, "resize": optional(int_list(length=2, high=MAX_PIXELS)), "train_size": optional(integer(1)),
        "classes": optional(int_list(low=0))}
# Each Keras optimizer's own hyperparameters (a test checks them against Keras's signatures).
OPTIMIZER_ARGS = {
    "sgd": {"momentum": number(0, 1, high_open=True), "nesterov": boolean},
    "adagrad": {"initial_accumulator_value": number(0), "epsilon": number(0, low_open=True)},
    "rmsprop": {"rho": number(0, 1, high_open=True), "momentum": number(0, 1, high_open=True),
                "epsilon": number(0, low_open=True), "centered": boolean},
    "adam": {"beta_1": number(0, 1, high_open=True), "beta_2": number(0, 1, high_open=True),
             "epsilon": number(0, low_open=True), "amsgrad": boolean},
    "adamax": {"beta_1": number(0, 1, high_open=True), "beta_2": number(0, 1, high_open=True),
               "epsilon": number(0, low_open=True)},
    "nadam": {"beta_1": number(0, 1, high_open=True), "beta_2": number(0, 1, high_open=True),
              "epsilon": number(0, low_open=True)},
    "adamw": {"weight_decay": number(0), "beta_1": number(0, 1, high_open=True),
              "beta_2": number(0, 1, high_open=True), "epsilon": number(0, low_open=True), "amsgrad": boolean},
}
OPTIMIZER_COMMON = {"name": choice(*OPTIMIZER_ARGS), "learning_rate": number(0, low_open=True)}
CLIPPING = {key: optional(number(0, low_open=True)) for key in CLIPPING_KEYS}
DECAY = {"name": text, "per": choice("step", "epoch"), "decay_steps": integer(1),
         "decay_rate": number(0, low_open=True), "staircase": boolean}
SCHEDULES = {
    "constant": {"name": text},
    "exponential_decay": DECAY,
    "inverse_time_decay": DECAY,
    "piecewise_constant_decay": {"name": text, "per": choice("step", "epoch"), "boundaries": int_list(),
                                 "multipliers": lambda v: None if isinstance(v, list) and v and all(
                                     number(0, low_open=True)(m) is None for m in v)
                                 else "must be a list of numbers > 0"},
    "reduce_lr_on_plateau": {"name": text, "monitor": choice(*MONITORS), "factor": number(0, 1, True, True),
                             "patience": integer(0), "min_lr": number(0)},
    "one_cycle": {"name": text, "initial_divisor": number(1), "final_divisor": number(1),
                  "tail_fraction": number(0, 1, high_open=True)},
}
TRACKING = {"uri": optional(text), "artifact_location": optional(text), "log_model": boolean}
TOP = {
    "name": safe_name, "seed": integer(0, MAX_SEED), "epochs": integer(1, MAX_EPOCHS),
    "batch_size": integer(1, MAX_BATCH), "validation_split": optional(number(0, 1, True, True)),
    "deterministic": boolean, "steps_per_execution": integer(1, MAX_BATCH), "precision": choice(*PRECISIONS),
    "threads": optional(integer(1, 1024)),
    "force": boolean, "early_stopping": {"patience": optional(integer(0, MAX_EPOCHS)), "restore_best_weights": boolean},
    "checkpoint": {"best_only": boolean}, "terminate_on_nan": boolean, "on_nan": choice("fail", "record"),
    "mc_dropout_samples": integer(0, 10_000),
    "diagnostics": {"enabled": boolean, "batch_size": integer(1, MAX_BATCH)}, "state_dir": text,
    "data": DATA, "model": {}, "optimizer": OPTIMIZER_COMMON, "clipping": CLIPPING, "schedule": {"name": text},
    "tracking": TRACKING,
    "transfer": {"source_classes": optional(int_list(low=0)), "source_epochs": integer(1, MAX_EPOCHS),
                 "source_seed": integer(0, MAX_SEED), "freeze_epochs": integer(0, MAX_EPOCHS)},
}


def validate(cfg: DictConfig | dict) -> dict:
    """The resolved config as plain dicts, or a ConfigError naming the first problem."""
    config = resolve(cfg)
    schema = dict(TOP)
    optimizer_name = config.get("optimizer", {}).get("name")
    schema["optimizer"] = {**OPTIMIZER_COMMON, **OPTIMIZER_ARGS.get(optimizer_name, {})}
    schedule_name = config.get("schedule", {}).get("name")
    if schedule_name not in SCHEDULES:
        raise ConfigError(f"schedule.name={schedule_name!r} must be one of {', '.join(SCHEDULES)}; "
                          f"pick a file with schedule=<option>")
    schema["schedule"] = SCHEDULES[schedule_name]
    model_name = config.get("model", {}).get("name") if isinstance(config.get("model"), dict) else None
    if model_name not in FAMILIES:
        raise ConfigError(f"model.name={model_name!r} must be one of {', '.join(FAMILIES)}; "
                          "pick a file with model=<option>")
    schema["model"] = FAMILIES[model_name].keys
    check_section(config, schema, "")
    check_combinations(config)
    return config


def resolve(cfg: DictConfig | dict) -> dict:
    try:
        return OmegaConf.to_container(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"config does not resolve: {' '.join(str(error).split())}") from None


def check_section(values: Any, schema: dict, where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.')} must be a mapping, found {values!r}")
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise ConfigError(f"unknown key {where}{unknown[0]} (known in {where.rstrip('.') or 'the top level'}: "
                          f"{', '.join(schema)}); remove it or fix the name")
    for key, rule in schema.items():
        if key not in values:
            raise ConfigError(f"{where}{key} is missing; add it to the config (see conf/)")
        if isinstance(rule, dict):
            check_section(values[key], rule, f"{where}{key}.")
        elif (problem := rule(values[key])) is not None:
            raise ConfigError(f"{where}{key}={shown(values[key])} {problem}; fix it on the command line or in conf/")


def shown(value: Any) -> str:
    """A value as the user typed it: true, null, 3, fast (not Python's True, None, 'fast')."""
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def check_combinations(config: dict) -> None:
    """Values that are each fine but cannot work together."""
    schedule = config["schedule"]
    clips = [key for key in CLIPPING_KEYS if config["clipping"][key] is not None]
    if len(clips) > 1:
        raise ConfigError(f"clipping sets {' and '.join(clips)}; Keras takes one: pick clipping=value|norm|global_norm")
    if schedule["name"] == "piecewise_constant_decay":
        bounds, multipliers = schedule["boundaries"], schedule["multipliers"]
        if len(multipliers) != len(bounds) + 1 or bounds != sorted(set(bounds)):
            raise ConfigError("schedule.boundaries must increase and schedule.multipliers have one more item "
                              f"(found {bounds} and {multipliers})")
    FAMILIES[config["model"]["name"]].check(config)


def config_hash(config: dict) -> str:
    """SHA-256 of the resolved config, without the keys that only say where results go."""
    kept = {key: value for key, value in config.items() if key not in NOT_HASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def run_identity(config: dict, data_hash: str, code: str) -> dict[str, str]:
    """What makes a result: resolved config, code version, data. The run key covers all three."""
    identity = {"config_hash": config_hash(config), "code_hash": code, "data_hash": data_hash}
    identity["run_key"] = hashlib.sha256("|".join(identity.values()).encode()).hexdigest()[:24]
    return identity


def source_config(config: dict) -> dict:
    """The config of a transfer recipe's source model (the book's model A).

    Same model body, data and optimizer; the source task's classes, all their training
    images, a softmax head, its own epochs and fixed seed. Its model is always logged:
    the target run loads it from there.
    """
    transfer = config["transfer"]
    source = copy.deepcopy(config)
    source.update(epochs=transfer["source_epochs"], seed=transfer["source_seed"], mc_dropout_samples=0, force=False,
                  transfer={**transfer, "source_classes": None, "freeze_epochs": 0})
    source["data"].update(classes=transfer["source_classes"], train_size=None)
    source["model"]["output"] = "softmax"
    source["tracking"]["log_model"] = True
    return source


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"model": {"depth": 3}} -> {"model.depth": 3}, the form MLflow params take."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
