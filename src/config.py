"""Check a composed training config before anything is built, and fingerprint it.

`validate(cfg)` walks the config against RULES: every key must be known, every value of
the right type and range, and a few combinations that cannot work (SELU with Batch
Normalization, MC dropout without dropout, ...) are refused. The first problem found
becomes one ConfigError line that names the key, the value and the fix.
"""

import copy
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.data import DATASETS
from src.errors import ConfigError

log = logging.getLogger(__name__)

Rule = Callable[[Any], str | None]  # a value -> what is wrong with it, or None

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "swish", "mish")
INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal", "lecun_uniform",
                "variance_scaling")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
CLIPPING_KEYS = ("clipvalue", "clipnorm", "global_clipnorm")
# Keys that change where or how a run is recorded, not what it computes: left out of the hash.
NOT_HASHED = ("name", "tracking", "force", "state_dir", "threads", "diagnostics")


# -- rules -------------------------------------------------------------------------------------

def integer(low: int | None = None, high: int | None = None) -> Rule:
    def rule(value):
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            bounds = (f" >= {low}" if low is not None else "") + (f" and <= {high:,}" if high else "")
            return f"must be an integer{bounds}"
        if high is not None and value > high:
            return f"must be at most {high:,} (a bigger value would only exhaust memory or time)"
    return rule


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Rule:
    interval = (f"{'(' if low_open or low is None else '['}{'-inf' if low is None else low}, "
                f"{'inf' if high is None else high}{')' if high_open or high is None else ']'}")

    def rule(value):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"must be a finite number in {interval}"
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            return f"must be in {interval}"
    return rule


def boolean(value) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def choice(*options: str) -> Rule:
    def rule(value):
        return None if value in options else f"must be one of {', '.join(options)}"
    return rule


def optional(rule: Rule) -> Rule:
    return lambda value: None if value is None else rule(value)


def text(value) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def safe_name(value) -> str | None:
    # Used in directory names and MLflow experiment names: no separators, no traversal.
    ok = isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", value)
    return None if ok else "must be text of letters, digits, '_', '-' or '.' (not only digits), starting with a letter or digit"


def int_list(length: int | None = None, low: int = 1, high: int | None = None) -> Rule:
    def rule(value):
        if not isinstance(value, list) or not all(integer(low, high)(item) is None for item in value):
            return f"must be a list of integers >= {low}" + (f" and <= {high:,}" if high else "")
        if length is not None and len(value) != length:
            return f"must have {length} items"
    return rule


def widths(value) -> str | None:
    if integer(1, MAX_WIDTH)(value) is None or (value and int_list(high=MAX_WIDTH)(value) is None):
        return None
    return f"must be an integer in [1, {MAX_WIDTH:,}] or a list of them, one per hidden layer"


# Upper bounds: past them a value can only exhaust memory, time or a C integer (a seed of 2**32,
# a width of 10**9, epochs of 10**20 ended in tracebacks or hung before these limits).
MAX_SEED = 2**32 - 1          # NumPy's seeds
MAX_EPOCHS = 100_000
MAX_BATCH = 2**20
MAX_DEPTH = 1_000             # the book's deepest network has 100 layers
MAX_WIDTH = 2**16
MAX_PARAMETERS = 2**28        # 1 GiB of float32 weights, 3 GiB with Adam's slots
MAX_PIXELS = 1_024            # data.resize, per side
INPUT_SIZES = {"fashion_mnist": 28 * 28, "cifar10": 32 * 32 * 3}  # flattened MLP inputs


# -- the schema ---------------------------------------------------------------------------------

DATA = {"name": choice(*DATASETS), "path": text, "scale": choice("none", "unit", "symmetric", "standard"),
        "flatten": boolean, "resize": optional(int_list(length=2, high=MAX_PIXELS)), "train_size": optional(integer(1)),
        "classes": optional(int_list(low=0))}
MLP = {
    "name": choice("mlp"), "depth": integer(1, MAX_DEPTH), "activation": choice(*ACTIVATIONS),
    "width": widths,
    "leaky_slope": number(0, 1, high_open=True), "kernel_initializer": choice(*INITIALIZERS),
    "init_scale": number(0, low_open=True), "init_mode": choice("fan_in", "fan_out", "fan_avg"),
    "init_distribution": choice("uniform", "truncated_normal", "untruncated_normal"),
    "batch_norm": choice("none", "after", "before"), "input_batch_norm": boolean, "bias_before_bn": boolean,
    "bn_momentum": number(0, 1, high_open=True), "output_initializer": choice(*INITIALIZERS[:-1]),
    "input_dropout": number(0, 1, high_open=True), "dropout": number(0, 1, high_open=True), "dropout_kind": choice("dropout", "alpha_dropout"),
    "l2": number(0), "max_norm": optional(number(0, low_open=True)),
    "dropout_scope": choice("all", "last"), "output": choice("softmax", "sigmoid"),
}


def layer_ref(value) -> str | None:
    if integer(0)(value) is None or (isinstance(value, str) and value):
        return None
    return "must be a layer index >= 0 or a layer name"


MOBILENET_V2 = {
    "name": choice("mobilenet_v2"), "alpha": number(0, low_open=True), "weights": text, "pretrained": boolean,
    "dropout": number(0, 1, high_open=True), "augment": choice("none", "flip", "flip_translate"),
    "translate": number(0, 0.5, low_open=True), "feature_cache": optional(text), "fine_tune_epochs": integer(0, MAX_EPOCHS),
    "fine_tune_from": layer_ref, "fine_tune_lr_factor": number(0, 1, low_open=True),
}
MODELS = {"mlp": MLP, "mobilenet_v2": MOBILENET_V2}  # model.name -> its keys (conf/model/<name>.yaml)
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # keras.applications.MobileNetV2's ImageNet weights
IMAGENET_SIZES = (96, 128, 160, 192, 224)
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
DECAY = {"name": text, "per": choice("step", "epoch"), "decay_steps": integer(1), "decay_rate": number(0, low_open=True),
         "staircase": boolean}
SCHEDULES = {
    "constant": {"name": text},
    "exponential_decay": DECAY,
    "inverse_time_decay": DECAY,
    "piecewise_constant_decay": {"name": text, "per": choice("step", "epoch"), "boundaries": int_list(),
                                 "multipliers": lambda v: None if isinstance(v, list) and v and all(
                                     number(0, low_open=True)(m) is None for m in v) else "must be a list of numbers > 0"},
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
    "data": DATA, "model": MLP, "optimizer": OPTIMIZER_COMMON, "clipping": CLIPPING, "schedule": {"name": text},
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
    if model_name not in MODELS:
        raise ConfigError(f"model.name={model_name!r} must be one of {', '.join(MODELS)}; pick a file with model=<option>")
    schema["model"] = MODELS[model_name]
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
    if config["model"]["name"] == "mobilenet_v2":
        check_pretrained(config)
    else:
        check_mlp(config)


def check_mlp(config: dict) -> None:
    model = config["model"]
    if model["bias_before_bn"] and model["batch_norm"] != "before":
        raise ConfigError(f"model.bias_before_bn=true keeps the bias of a Dense layer followed by BN, but "
                          f"model.batch_norm={model['batch_norm']}; set model.batch_norm=before or drop bias_before_bn")
    if model["activation"] == "selu" and model["batch_norm"] != "none":
        raise ConfigError("model.activation=selu with model.batch_norm=" + model["batch_norm"] +
                          ": SELU normalises itself and Batch Normalization breaks that; set model.batch_norm=none")
    if isinstance(model["width"], list) and len(model["width"]) != model["depth"]:
        raise ConfigError(f"model.width lists {len(model['width'])} layers but model.depth={model['depth']}; "
                          "make them agree")
    if (parameters := mlp_parameters(config)) > MAX_PARAMETERS:
        raise ConfigError(f"model.depth={model['depth']} x model.width={model['width']} makes {parameters:,} "
                          f"weights, above the {MAX_PARAMETERS:,} this lab allows (1 GiB of float32); make it smaller")
    if config["mc_dropout_samples"] > 0 and model["dropout"] == 0 and model["input_dropout"] == 0:
        raise ConfigError("mc_dropout_samples > 0 needs dropout to sample: set model.dropout (e.g. 0.2)")
    if model["output"] == "sigmoid" and len(config["data"]["classes"] or ()) != 2:
        raise ConfigError("model.output=sigmoid is a binary head: set data.classes to two classes (e.g. [0, 2]) "
                          "or use model.output=softmax")
    transfer = config["transfer"]
    if transfer["source_classes"] and transfer["freeze_epochs"] >= config["epochs"]:
        raise ConfigError(f"transfer.freeze_epochs={transfer['freeze_epochs']} must be below epochs="
                          f"{config['epochs']}: the reused layers are unfrozen for the remaining epochs")
    if model["activation"] == "selu" and config["data"]["scale"] != "standard":
        log.warning("SELU self-normalises only on standardised inputs: consider data.scale=standard")
    if model["dropout_kind"] == "alpha_dropout" and model["activation"] != "selu" and model["dropout"] + model[
            "input_dropout"] > 0:
        log.warning("alpha_dropout is designed for SELU; with %s plain dropout is the usual choice",
                    model["activation"])


def mlp_parameters(config: dict) -> int:
    """The MLP's weight count (Dense kernels and biases), known before anything is built."""
    model = config["model"]
    widths = model["width"] if isinstance(model["width"], list) else [model["width"]] * model["depth"]
    sizes = [INPUT_SIZES[config["data"]["name"]], *widths, 10]
    return sum((inputs + 1) * outputs for inputs, outputs in zip(sizes, sizes[1:], strict=False))


def check_pretrained(config: dict) -> None:
    """A pretrained base needs colour images at a size it was made for, and none of the MLP-only features."""
    model, data = config["model"], config["data"]
    if data["name"] != "cifar10":
        raise ConfigError(f"model={model['name']} needs 3-channel images: use data=cifar10 ({data['name']} is greyscale)")
    if data["resize"] is None or data["flatten"]:
        raise ConfigError(f"model={model['name']} needs image tensors at its input size: set data.resize (e.g. "
                          "[96, 96]) and data.flatten=false")
    height, width = data["resize"]
    if height < 32 or width < 32:
        raise ConfigError(f"data.resize={data['resize']}: MobileNetV2 needs at least 32 x 32 pixels")
    if model["pretrained"] and model["weights"] == "imagenet" and (model["alpha"] not in IMAGENET_ALPHAS or height != width
                                           or height not in IMAGENET_SIZES):
        raise ConfigError(f"ImageNet weights exist for model.alpha in {list(IMAGENET_ALPHAS)} and square inputs of "
                          f"{list(IMAGENET_SIZES)} pixels, not alpha {model['alpha']} at {height}x{width}; change "
                          "them or use model.weights=none")
    if config["transfer"]["source_classes"] is not None:
        raise ConfigError("transfer.* reuses layers of an MLP trained on other classes; with "
                          f"model={model['name']} set transfer.source_classes=null")
    if config["mc_dropout_samples"] > 0:
        raise ConfigError(f"mc_dropout_samples is for the MLP models; set it to 0 with model={model['name']}")
    if model["pretrained"] and model["weights"] != "none" and data["scale"] != "symmetric":
        log.warning("data.scale=%s: MobileNetV2's pretrained weights expect inputs in [-1, 1] (data.scale=symmetric)",
                    data["scale"])


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
