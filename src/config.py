"""Check a composed training config before anything is built, and fingerprint it.

Each key is stated once, in conf/: the YAML files declare the keys of every section with their
defaults and one-line meanings, and a key's type is its default's (true/false, an integer, a
number, text, a list). This module adds only what a default cannot say: LIMITS (ranges,
choices, and the type of a key whose default is null) and combinations that cannot work
(SELU with Batch Normalization, MC dropout without dropout, ...). `validate(cfg)` walks the
config against both; the first problem found becomes one ConfigError line that names the key,
the value and the fix.
"""

import copy
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.data import DATASETS
from src.errors import ConfigError
from src.families import FAMILIES
from src.paths import REPO
from src.rules import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_PIXELS,
    MAX_SEED,
    Rule,
    boolean,
    choice,
    int_list,
    integer,
    number,
    optional,
    safe_name,
    text,
)

CONF = REPO / "conf"
GROUPS = ("data", "model", "optimizer", "clipping", "schedule", "tracking")  # conf/<group>/*.yaml
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
PRETEXT_TASKS = ("autoencoder", "rotation")  # tasks learnt without labels (src/pretext.py)
CLIPPING_KEYS = ("clipvalue", "clipnorm", "global_clipnorm")
# Keys that change where or how a run is recorded, not what it computes: left out of the hash.
NOT_HASHED = ("name", "tracking", "force", "state_dir", "threads", "diagnostics")


# -- the limits: what a key's default cannot say ---------------------------------------------------

# Each Keras optimizer's own hyperparameters (a test checks them against Keras's signatures).
OPTIMIZER_ARGS = {
    "sgd": {"momentum": number(0, 1, high_open=True)},
    "adagrad": {"initial_accumulator_value": number(0), "epsilon": number(0, low_open=True)},
    "rmsprop": {"rho": number(0, 1, high_open=True), "momentum": number(0, 1, high_open=True),
                "epsilon": number(0, low_open=True)},
    "adam": {"beta_1": number(0, 1, high_open=True), "beta_2": number(0, 1, high_open=True),
             "epsilon": number(0, low_open=True)},
    "adamax": {"beta_1": number(0, 1, high_open=True), "beta_2": number(0, 1, high_open=True),
               "epsilon": number(0, low_open=True)},
    "nadam": {"beta_1": number(0, 1, high_open=True), "beta_2": number(0, 1, high_open=True),
              "epsilon": number(0, low_open=True)},
    "adamw": {"weight_decay": number(0), "beta_1": number(0, 1, high_open=True),
              "beta_2": number(0, 1, high_open=True), "epsilon": number(0, low_open=True)},
}
DECAY = {"per": choice("step", "epoch"), "decay_steps": integer(1), "decay_rate": number(0, low_open=True)}
# The schedules src/optim.py builds, each with the limits of its keys.
SCHEDULES = {
    "constant": {},
    "exponential_decay": DECAY,
    "inverse_time_decay": DECAY,
    "piecewise_constant_decay": {"per": choice("step", "epoch"), "boundaries": int_list(),
                                 "multipliers": lambda v: None if isinstance(v, list) and v and all(
                                     number(0, low_open=True)(m) is None for m in v)
                                 else "must be a list of numbers > 0"},
    "reduce_lr_on_plateau": {"monitor": choice(*MONITORS), "factor": number(0, 1, True, True),
                             "patience": integer(0), "min_lr": number(0)},
    "one_cycle": {"initial_divisor": number(1), "final_divisor": number(1),
                  "tail_fraction": number(0, 1, high_open=True), "max_momentum": number(0, 1, True, True),
                  "min_momentum": number(0, 1, high_open=True)},
}
LIMITS = {
    "name": safe_name, "seed": integer(0, MAX_SEED), "epochs": integer(1, MAX_EPOCHS),
    "batch_size": integer(1, MAX_BATCH), "validation_split": optional(number(0, 1, True, True)),
    "steps_per_execution": integer(1, MAX_BATCH), "precision": choice(*PRECISIONS),
    "threads": optional(integer(1, 1024)), "early_stopping": {"patience": optional(integer(0, MAX_EPOCHS))},
    "on_nan": choice("fail", "record"), "mc_dropout_samples": integer(0, 10_000),
    "task": choice("classify", *PRETEXT_TASKS),
    "diagnostics": {"batch_size": integer(1, MAX_BATCH)},
    "transfer": {"source_classes": optional(int_list(low=0)), "pretrain": optional(choice(*PRETEXT_TASKS)),
                 "source_epochs": integer(1, MAX_EPOCHS),
                 "source_seed": integer(0, MAX_SEED), "freeze_epochs": integer(0, MAX_EPOCHS)},
    "data": {"name": choice(*DATASETS), "scale": choice("none", "unit", "symmetric", "standard"),
             "resize": optional(int_list(length=2, high=MAX_PIXELS)), "train_size": optional(integer(1)),
             "classes": optional(int_list(low=0))},
    "clipping": {key: optional(number(0, low_open=True)) for key in CLIPPING_KEYS},
    "tracking": {"uri": optional(text), "artifact_location": optional(text)},
}


def section_limits(config: dict) -> dict:
    """LIMITS, with those of the optimizer, schedule and model family the config names."""
    optimizer, schedule, model = (config.get(group) if isinstance(config.get(group), dict) else {}
                                  for group in ("optimizer", "schedule", "model"))
    if schedule.get("name") not in SCHEDULES:
        raise ConfigError(f"schedule.name={schedule.get('name')!r} must be one of {', '.join(SCHEDULES)}; "
                          "pick a file with schedule=<option>")
    if model.get("name") not in FAMILIES:
        raise ConfigError(f"model.name={model.get('name')!r} must be one of {', '.join(FAMILIES)}; "
                          "pick a file with model=<option>")
    return {**LIMITS, "schedule": SCHEDULES[schedule["name"]], "model": FAMILIES[model["name"]].limits,
            "optimizer": {"name": choice(*OPTIMIZER_ARGS), "learning_rate": number(0, low_open=True),
                          **OPTIMIZER_ARGS.get(optimizer.get("name"), {})}}


# -- the declarations: what conf/ says ---------------------------------------------------------------

@functools.cache
def conf_file(path: Path) -> dict:
    """A conf/ file's keys and defaults (interpolations left as written; no defaults list, no hydra)."""
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return {key: value for key, value in values.items() if key not in ("defaults", "hydra")}


@functools.cache
def group_files(group: str) -> tuple[dict, ...]:
    """conf/<group>/*.yaml as conf_file reads them: listed once per process, not per validated job."""
    return tuple(conf_file(path) for path in sorted((CONF / group).glob("*.yaml")))


def declared(config: dict) -> dict:
    """The keys conf/ declares for this config, with their defaults: conf/config.yaml's, and per
    group those of the group's files of the config's `name` (all its files where they have none)."""
    sections = dict(conf_file(CONF / "config.yaml"))
    for group in GROUPS:
        files = group_files(group)
        named = [values for values in files if "name" in values]  # files without one extend a named one
        if named:
            section = config.get(group)
            name = section.get("name") if isinstance(section, dict) else None
            files = [values for values in named if values["name"] == name]
            if not files:
                raise ConfigError(f"{group}.name={name!r} must be one of "
                                  f"{', '.join(sorted({values['name'] for values in named}))}; "
                                  f"pick a file with {group}=<option>")
        sections[group] = {key: value for values in reversed(files) for key, value in values.items()}
    return sections


def type_of(default: Any, key: str) -> Rule:
    """The rule a key's default implies: the same type (an integer where a number is expected)."""
    if isinstance(default, bool):
        return boolean
    if isinstance(default, int):
        return integer()
    if isinstance(default, float):
        return number()
    if isinstance(default, str):
        return text
    if isinstance(default, list):
        return lambda value: None if isinstance(value, list) else "must be a list"
    raise TypeError(f"{key}: its default is null, so its type must be stated in src/config.py LIMITS")


# -- the check -------------------------------------------------------------------------------------

def validate(cfg: DictConfig | dict) -> dict:
    """The resolved config as plain dicts, or a ConfigError naming the first problem."""
    config = resolve(cfg)
    limits = section_limits(config)
    check_section(config, declared(config), limits, "")
    check_combinations(config)
    return config


def resolve(cfg: DictConfig | dict) -> dict:
    try:
        return OmegaConf.to_container(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"config does not resolve: {' '.join(str(error).split())}") from None


def check_section(values: Any, defaults: dict, limits: dict, where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.')} must be a mapping, found {values!r}")
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown key {where}{unknown[0]} (known in {where.rstrip('.') or 'the top level'}: "
                          f"{', '.join(defaults)}); remove it or fix the name")
    for key, default in defaults.items():
        if key not in values:
            raise ConfigError(f"{where}{key} is missing; add it to the config (see conf/)")
        if isinstance(default, dict):
            check_section(values[key], default, limits.get(key, {}), f"{where}{key}.")
            continue
        rule = limits.get(key) or type_of(default, where + key)
        if (problem := rule(values[key])) is not None:
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
    if schedule.get("cycle_momentum"):
        if config["optimizer"]["name"] != "sgd":
            raise ConfigError(f"schedule.cycle_momentum=true cycles SGD's momentum, but optimizer="
                              f"{config['optimizer']['name']}; use optimizer=sgd (or momentum, nesterov)")
        if schedule["min_momentum"] > schedule["max_momentum"]:
            raise ConfigError(f"schedule.min_momentum={schedule['min_momentum']} is above schedule.max_momentum="
                              f"{schedule['max_momentum']}; swap them")
    check_task(config)
    FAMILIES[config["model"]["name"]].check(config)


def check_task(config: dict) -> None:
    """One source per transfer, and a pretext job is a source itself."""
    transfer, task = config["transfer"], config["task"]
    if transfer["pretrain"] and transfer["source_classes"]:
        raise ConfigError(f"transfer.pretrain={transfer['pretrain']} and transfer.source_classes="
                          f"{transfer['source_classes']} name two sources for the same layers; set one to null")
    if task != "classify" and (transfer["pretrain"] or transfer["source_classes"]):
        raise ConfigError(f"task={task} trains a source model itself; set transfer.pretrain=null and "
                          "transfer.source_classes=null (or task=classify to reuse one)")
    if task == "autoencoder" and config["mc_dropout_samples"] > 0:
        raise ConfigError("mc_dropout_samples averages class probabilities, which task=autoencoder has none of; "
                          "set mc_dropout_samples=0")


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
    """The config of a transfer recipe's source model (the book's model A, or a pretext model).

    Same model body, data and optimizer; the source task (other classes, or a task without
    labels on every class), all its training images, a softmax head, its own epochs and fixed
    seed. Its model is always logged: the target run loads it from there.
    """
    transfer = config["transfer"]
    source = copy.deepcopy(config)
    source.update(epochs=transfer["source_epochs"], seed=transfer["source_seed"], mc_dropout_samples=0, force=False,
                  task=transfer["pretrain"] or "classify",
                  transfer={**transfer, "source_classes": None, "pretrain": None, "freeze_epochs": 0})
    source["data"].update(classes=transfer["source_classes"], train_size=None)
    source["model"]["output"] = "softmax"
    source["tracking"]["log_model"] = True
    return source


def source_role(config: dict) -> str:
    """How the source's run is named and tagged (ch11.role)."""
    transfer = config["transfer"]
    if transfer["pretrain"]:
        return f"source model ({transfer['pretrain']} pretraining, no labels)"
    return f"source model (classes {','.join(map(str, transfer['source_classes']))})"


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"model": {"depth": 3}} -> {"model.depth": 3}, the form MLflow params take."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def compose(overrides: list[str]) -> dict:
    """conf/config.yaml with Hydra overrides, as one job (an experiment file's sweep settings dropped),
    validated as src.train validates a job."""
    from hydra import compose as hydra_compose  # noqa: PLC0415
    from hydra import initialize_config_dir  # noqa: PLC0415
    from omegaconf import open_dict  # noqa: PLC0415

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return validate(cfg)
