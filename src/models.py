"""The MLP family's models in plain Keras: the book's dense classifier (build_mlp), whose body the
pretext tasks' networks share (src/pretext.py), and the layers they are made of.

Layer names follow the depth (hidden_01, hidden_01_act, ...) so gradient diagnostics and
figures can plot any quantity against depth.
"""

import keras

from src.errors import ConfigError


@keras.saving.register_keras_serializable(package="ch11")
class RReLU(keras.layers.Layer):
    """Randomized leaky ReLU (Xu et al. 2015, in the book's list of ReLU variants): in training each
    negative input gets a slope drawn uniformly from [lower, upper], afresh at every step; at
    inference the mean slope, (lower + upper) / 2. The draws come from the layer's own seed
    generator, which keras.utils.set_random_seed seeds, as Dropout's does."""

    def __init__(self, lower: float = 1 / 8, upper: float = 1 / 3, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.lower, self.upper, self.seed = lower, upper, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if training:
            slope = keras.random.uniform(keras.ops.shape(inputs), self.lower, self.upper, dtype=inputs.dtype,
                                         seed=self.seed_generator)
        else:
            slope = (self.lower + self.upper) / 2
        return keras.ops.where(inputs >= 0, inputs, inputs * slope)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "lower": self.lower, "upper": self.upper, "seed": self.seed}


ACTIVATION_LAYERS = {
    "leaky_relu": lambda cfg, name: keras.layers.LeakyReLU(negative_slope=cfg["leaky_slope"], name=name),
    "prelu": lambda cfg, name: keras.layers.PReLU(name=name),  # the slope is learned, one per unit
    "rrelu": lambda cfg, name: RReLU(cfg["rrelu_lower"], cfg["rrelu_upper"], name=name),
    "elu": lambda cfg, name: keras.layers.ELU(alpha=cfg["elu_alpha"], name=name),  # Activation("elu") is alpha 1
}
DROPOUT_LAYERS = {"dropout": keras.layers.Dropout, "alpha_dropout": keras.layers.AlphaDropout}


def build_mlp(cfg: dict, input_shape: tuple[int, ...], n_classes: int) -> keras.Model:
    """Flatten -> (BN) -> (dropout) -> depth x [Dense -> (BN) -> activation -> (BN) -> (dropout)] -> output.

    The output is softmax over n_classes, or one sigmoid unit (model.output=sigmoid, two classes).
    """
    layers = mlp_body(cfg, input_shape)
    # float32 output: softmax and the loss stay accurate under mixed precision.
    binary = cfg["output"] == "sigmoid"
    layers.append(keras.layers.Dense(1 if binary else n_classes, activation=cfg["output"],
                                     kernel_initializer=cfg["output_initializer"], kernel_regularizer=regularizer(cfg),
                                     dtype="float32", name="output"))
    return keras.Sequential(layers, name="mlp")


def mlp_body(cfg: dict, input_shape: tuple[int, ...]) -> list[keras.layers.Layer]:
    """The input and the hidden layers (hidden_NN, what transfer reuses), without a head."""
    layers = [keras.Input(shape=input_shape, name="image"), keras.layers.Flatten(name="flatten")]
    if cfg["input_batch_norm"]:
        layers.append(batch_norm(cfg, "input_bn"))
    if cfg["input_dropout"] > 0:
        layers.append(DROPOUT_LAYERS[cfg["dropout_kind"]](cfg["input_dropout"], name="input_dropout"))
    widths = hidden_widths(cfg)
    for index, width in enumerate(widths, start=1):
        name = f"hidden_{index:0{depth_digits(cfg)}d}"
        # BN before the activation has its own shift (beta): a Dense bias there is redundant, and
        # the book's BN section drops it; its exercise 8 keeps it (model.bias_before_bn).
        layers.append(keras.layers.Dense(
            width, use_bias=cfg["batch_norm"] != "before" or cfg["bias_before_bn"], kernel_initializer=initializer(cfg),
            kernel_regularizer=regularizer(cfg), kernel_constraint=constraint(cfg), name=name))
        if cfg["batch_norm"] == "before":
            layers.append(batch_norm(cfg, f"{name}_bn"))
        layers.append(activation_layer(cfg, f"{name}_act"))
        if cfg["batch_norm"] == "after":
            layers.append(batch_norm(cfg, f"{name}_bn"))
        if cfg["dropout"] > 0 and (cfg["dropout_scope"] == "all" or index == len(widths)):
            layers.append(DROPOUT_LAYERS[cfg["dropout_kind"]](cfg["dropout"], name=f"{name}_dropout"))
    return layers


def hidden_widths(cfg: dict) -> list[int]:
    return cfg["width"] if isinstance(cfg["width"], list) else [cfg["width"]] * cfg["depth"]


def depth_digits(cfg: dict) -> int:
    """Digits of a layer's number in its name: hidden_01 ... hidden_50, hidden_001 ... hidden_100."""
    return max(2, len(str(cfg["depth"])))


def initializer(cfg: dict) -> keras.initializers.Initializer:
    if cfg["kernel_initializer"] == "variance_scaling":
        return keras.initializers.VarianceScaling(scale=cfg["init_scale"], mode=cfg["init_mode"],
                                                  distribution=cfg["init_distribution"])
    return keras.initializers.get(cfg["kernel_initializer"])


def batch_norm(cfg: dict, name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(momentum=cfg["bn_momentum"], epsilon=cfg["bn_epsilon"], name=name)


def regularizer(cfg: dict) -> keras.regularizers.Regularizer | None:
    """L1, L2 or both (the book's l1_l2) on the kernels; None when both factors are 0."""
    l1, l2 = cfg["l1"], cfg["l2"]
    if l1 > 0 and l2 > 0:
        return keras.regularizers.L1L2(l1=l1, l2=l2)
    if l1 > 0:
        return keras.regularizers.L1(l1)
    return keras.regularizers.L2(l2) if l2 > 0 else None


def constraint(cfg: dict) -> keras.constraints.Constraint | None:
    return keras.constraints.MaxNorm(cfg["max_norm"], axis=0) if cfg["max_norm"] else None


def activation_layer(cfg: dict, name: str) -> keras.layers.Layer:
    make = ACTIVATION_LAYERS.get(cfg["activation"])
    return make(cfg, name) if make else keras.layers.Activation(cfg["activation"], name=name)


def reuse_layers(model: keras.Model, source: keras.Model) -> list[keras.layers.Layer]:
    """Copy the source's hidden layers (Dense and BN, matched by name) into model: a clone, not shared.

    The output layer stays new. Returns the layers that now hold reused weights.
    """
    available = {layer.name: layer for layer in source.layers}
    reused = []
    for layer in model.layers:
        if layer.name == "output" or not isinstance(layer, keras.layers.Dense | keras.layers.BatchNormalization):
            continue
        match = available.get(layer.name)
        if match is None or [w.shape for w in match.weights] != [w.shape for w in layer.weights]:
            raise ConfigError(f"the source model has no layer {layer.name} shaped like this one; source and target "
                              "must share the model.* settings (only model.output may differ)")
        layer.set_weights(match.get_weights())
        reused.append(layer)
    return reused


def activation_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The hidden activation layers, input side first."""
    return [layer for layer in model.layers if layer.name.endswith("_act")]


def kernel_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The Dense layers (hidden then output), input side first."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]


# -- Monte Carlo dropout (Gal & Ghahramani 2016): dropout stays on at inference ----------------

class MCDropout(keras.layers.Dropout):
    def call(self, inputs, training=None):
        return super().call(inputs, training=True)


class MCAlphaDropout(keras.layers.AlphaDropout):
    def call(self, inputs, training=None):
        return super().call(inputs, training=True)


MC_REPLACEMENTS = {keras.layers.Dropout: MCDropout, keras.layers.AlphaDropout: MCAlphaDropout}


def mc_dropout_model(model: keras.Model) -> keras.Model:
    """A copy of model whose dropout layers sample at inference; BN stays in inference mode."""
    def clone(layer):
        kind = MC_REPLACEMENTS.get(type(layer), type(layer))
        return kind.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
