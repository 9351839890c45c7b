"""The model families `model.name` selects, each stated once: its limits, its rules, its code.

Adding a family is a config file (conf/model/<name>.yaml: its keys, defaults and meanings), an
engine module whose fit_and_evaluate(config, data, state, sink, workdir, source) builds and
trains it (on src/fitting.py's phased fit), and one entry in FAMILIES. The job, the config check, the
run key's code hash and the tests take everything else from that entry.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

from src.errors import ConfigError
from src.rules import MAX_EPOCHS, choice, int_list, integer, number, optional, text

log = logging.getLogger(__name__)

# The result code every family runs (hashed into every run key; dvc.yaml's experiment stages
# depend on it, with the family's own code: a test keeps them in step).
COMMON_CODE = ("src/fitting.py", "src/compiled.py", "src/optim.py", "src/callbacks.py", "src/resume.py",
               "src/data/__init__.py", "src/data/load.py", "src/data/files.py")


@dataclass(frozen=True)
class Family:
    limits: dict                      # model.<key> -> its rule (src/rules.py), for keys whose default in
                                      # conf/model/<name>.yaml cannot say it: ranges, choices, null defaults
    check: Callable[[dict], None]     # rules across keys of the whole config (a ConfigError names the fix)
    engine: str                       # the module whose fit_and_evaluate() trains it
    code: tuple[str, ...]             # its own result code (files, or folders of .py files)
    pretrained_base: bool = False     # its base's weights are found (or fetched) before a run starts
    gradient_figure: bool = False     # its engine logs per-layer gradient norms: the run gets their figure


def has_source(transfer: dict) -> bool:
    """Whether the job reuses a source model's layers: one trained on other classes, or on a pretext task."""
    return bool(transfer["source_classes"] or transfer["pretrain"])


# -- mlp: the book's dense networks --------------------------------------------------------------

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "rrelu", "prelu", "elu", "selu", "gelu", "swish", "mish")
INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal", "lecun_uniform",
                "variance_scaling")
MAX_DEPTH = 1_000             # the book's deepest network has 100 layers
MAX_WIDTH = 2**16
MAX_PARAMETERS = 2**28        # 1 GiB of float32 weights, 3 GiB with Adam's slots
INPUT_SIZES = {"fashion_mnist": 28 * 28, "cifar10": 32 * 32 * 3}  # flattened MLP inputs


def widths(value) -> str | None:
    if integer(1, MAX_WIDTH)(value) is None or (value and int_list(high=MAX_WIDTH)(value) is None):
        return None
    return f"must be an integer in [1, {MAX_WIDTH:,}] or a list of them, one per hidden layer"


MLP = {
    "depth": integer(1, MAX_DEPTH), "activation": choice(*ACTIVATIONS), "width": widths,
    "leaky_slope": number(0, 1, high_open=True), "kernel_initializer": choice(*INITIALIZERS),
    "rrelu_lower": number(0, 1, high_open=True), "rrelu_upper": number(0, 1, high_open=True),
    "elu_alpha": number(0, low_open=True), "bn_epsilon": number(0, low_open=True), "l1": number(0),
    "init_scale": number(0, low_open=True), "init_mode": choice("fan_in", "fan_out", "fan_avg"),
    "init_distribution": choice("uniform", "truncated_normal", "untruncated_normal"),
    "batch_norm": choice("none", "after", "before"), "bn_momentum": number(0, 1, high_open=True),
    "output_initializer": choice(*INITIALIZERS[:-1]),
    "input_dropout": number(0, 1, high_open=True), "dropout": number(0, 1, high_open=True),
    "dropout_kind": choice("dropout", "alpha_dropout"),
    "l2": number(0), "max_norm": optional(number(0, low_open=True)),
    "dropout_scope": choice("all", "last"), "output": choice("softmax", "sigmoid"),
}


def check_mlp(config: dict) -> None:
    model = config["model"]
    if model["bias_before_bn"] and model["batch_norm"] != "before":
        raise ConfigError(f"model.bias_before_bn=true keeps the bias of a Dense layer followed by BN, but "
                          f"model.batch_norm={model['batch_norm']}; set model.batch_norm=before or drop bias_before_bn")
    if model["activation"] == "selu" and model["batch_norm"] != "none":
        raise ConfigError("model.activation=selu with model.batch_norm=" + model["batch_norm"] +
                          ": SELU normalises itself and Batch Normalization breaks that; set model.batch_norm=none")
    if model["rrelu_lower"] > model["rrelu_upper"]:
        raise ConfigError(f"model.rrelu_lower={model['rrelu_lower']} is above model.rrelu_upper="
                          f"{model['rrelu_upper']}: the slopes are drawn from [lower, upper]; swap them")
    if isinstance(model["width"], list) and len(model["width"]) != model["depth"]:
        raise ConfigError(f"model.width lists {len(model['width'])} layers but model.depth={model['depth']}; "
                          "make them agree")
    if (parameters := mlp_parameters(config)) > MAX_PARAMETERS:
        raise ConfigError(f"model.depth={model['depth']} x model.width={model['width']} makes {parameters:,} "
                          f"weights, above the {MAX_PARAMETERS:,} this lab allows (1 GiB of float32); make it smaller")
    if config["mc_dropout_samples"] > 0 and model["dropout"] == 0 and model["input_dropout"] == 0:
        raise ConfigError("mc_dropout_samples > 0 needs dropout to sample: set model.dropout (e.g. 0.2)")
    if model["output"] == "sigmoid" and config["task"] == "rotation":
        raise ConfigError("task=rotation has four classes (the quarter turns): use model.output=softmax")
    if model["output"] == "sigmoid" and len(config["data"]["classes"] or ()) != 2:
        raise ConfigError("model.output=sigmoid is a binary head: set data.classes to two classes (e.g. [0, 2]) "
                          "or use model.output=softmax")
    transfer = config["transfer"]
    if has_source(transfer) and transfer["freeze_epochs"] >= config["epochs"]:
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


# -- mobilenet_v2: a pretrained convolutional base, fine-tuned in two phases ------------------------

IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # keras.applications.MobileNetV2's ImageNet weights
IMAGENET_SIZES = (96, 128, 160, 192, 224)


def layer_ref(value) -> str | None:
    if integer(0)(value) is None or (isinstance(value, str) and value):
        return None
    return "must be a layer index >= 0 or a layer name"


MOBILENET_V2 = {
    "alpha": number(0, low_open=True), "dropout": number(0, 1, high_open=True),
    "augment": choice("none", "flip", "flip_translate"),
    "translate": number(0, 0.5, low_open=True), "feature_cache": optional(text),
    "fine_tune_epochs": integer(0, MAX_EPOCHS),
    "fine_tune_from": layer_ref, "fine_tune_lr_factor": number(0, 1, low_open=True),
    "bn_momentum": optional(number(0, 1, high_open=True)),
}


def check_pretrained(config: dict) -> None:
    """A pretrained base needs colour images at a size it was made for, and none of the MLP-only features."""
    model, data = config["model"], config["data"]
    if data["name"] != "cifar10":
        raise ConfigError(f"model={model['name']} needs 3-channel images: use data=cifar10 "
                          f"({data['name']} is greyscale)")
    if data["resize"] is None or data["flatten"]:
        raise ConfigError(f"model={model['name']} needs image tensors at its input size: set data.resize (e.g. "
                          "[96, 96]) and data.flatten=false")
    height, width = data["resize"]
    if height < 32 or width < 32:
        raise ConfigError(f"data.resize={data['resize']}: MobileNetV2 needs at least 32 x 32 pixels")
    imagenet_exists = model["alpha"] in IMAGENET_ALPHAS and height == width and height in IMAGENET_SIZES
    if model["pretrained"] and model["weights"] == "imagenet" and not imagenet_exists:
        raise ConfigError(f"ImageNet weights exist for model.alpha in {list(IMAGENET_ALPHAS)} and square inputs of "
                          f"{list(IMAGENET_SIZES)} pixels, not alpha {model['alpha']} at {height}x{width}; change "
                          "them or use model.weights=none")
    if has_source(config["transfer"]) or config["task"] != "classify":
        raise ConfigError("transfer.* and task= are for the MLP's layers (other classes, or a pretext task); with "
                          f"model={model['name']} set transfer.source_classes=null, transfer.pretrain=null and "
                          "task=classify")
    if config["mc_dropout_samples"] > 0:
        raise ConfigError(f"mc_dropout_samples is for the MLP models; set it to 0 with model={model['name']}")
    if model["train_base"] and model["fine_tune_epochs"] > 0:
        raise ConfigError(f"model.train_base=true trains the whole base from the first epoch, so phase 2 "
                          f"(model.fine_tune_epochs={model['fine_tune_epochs']}) has nothing to unfreeze; set "
                          "model.fine_tune_epochs=0 and count its epochs in epochs")
    if model["pretrained"] and model["weights"] != "none" and data["scale"] != "symmetric":
        log.warning("data.scale=%s: MobileNetV2's pretrained weights expect inputs in [-1, 1] (data.scale=symmetric)",
                    data["scale"])


FAMILIES = {
    "mlp": Family(MLP, check_mlp, engine="src.engine",
                  code=("src/engine.py", "src/models.py", "src/pretext.py", "src/calibration.py"),
                  gradient_figure=True),
    "mobilenet_v2": Family(MOBILENET_V2, check_pretrained, engine="src.pretrained.engine", code=("src/pretrained",),
                           pretrained_base=True),
}
