"""The parts a run is built from: models, optimizers, schedules, diagnostics, splits."""

import keras
import numpy as np
import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir

from src.callbacks import GradientDiagnostics
from src.config import validate
from src.data.load import load_prepared, reshape_splits
from src.engine import MC_DROPOUT_BATCH, mc_dropout_passes, predict
from src.errors import ConfigError
from src.models import RReLU, build_mlp, kernel_layers, mc_dropout_model
from src.optim import OneCycle, OneCycleSGD, build_optimizer, schedule_callbacks


def config(*overrides: str) -> dict:
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return validate(compose("config", list(overrides)))


def layer_types(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_the_default_mlp_is_the_books_3x100_relu_he_model():
    model = build_mlp(config()["model"], (28, 28), 10)
    dense = kernel_layers(model)
    assert [layer.units for layer in dense] == [100, 100, 100, 10]
    assert all(isinstance(layer.kernel_initializer, keras.initializers.HeNormal) for layer in dense[:-1])
    assert model.count_params() == 784 * 100 + 100 + 2 * (100 * 100 + 100) + 100 * 10 + 10


def test_batch_norm_before_the_activation_drops_the_dense_bias():
    before = build_mlp(config("model.batch_norm=before", "model.input_batch_norm=true")["model"], (28, 28), 10)
    assert layer_types(before)[:5] == ["Flatten", "BatchNormalization", "Dense", "BatchNormalization", "Activation"]
    assert all(not layer.use_bias for layer in kernel_layers(before)[:-1])
    after = build_mlp(config("model.batch_norm=after")["model"], (28, 28), 10)
    assert layer_types(after)[1:4] == ["Dense", "Activation", "BatchNormalization"]
    assert all(layer.use_bias for layer in kernel_layers(after))


def test_exercise_8_keeps_the_bias_before_bn_and_bn_momentum_and_output_initializer_are_settable():
    model = build_mlp(config("model.batch_norm=before", "model.bias_before_bn=true", "model.bn_momentum=0.9",
                             "model.output_initializer=he_normal")["model"], (28, 28), 10)
    assert layer_types(model)[:4] == ["Flatten", "Dense", "BatchNormalization", "Activation"]
    assert all(layer.use_bias for layer in kernel_layers(model))
    assert model.get_layer("hidden_01_bn").momentum == pytest.approx(0.9)
    assert isinstance(model.get_layer("output").kernel_initializer, keras.initializers.HeNormal)
    default = build_mlp(config()["model"], (28, 28), 10)
    assert isinstance(default.get_layer("output").kernel_initializer, keras.initializers.GlorotUniform)
    with pytest.raises(ConfigError, match="model.bias_before_bn=true .* but model.batch_norm=after; set "):
        config("model.batch_norm=after", "model.bias_before_bn=true")
    with pytest.raises(ConfigError, match="model.bn_momentum"):
        config("model.bn_momentum=1.0")


@pytest.mark.parametrize(("activation", "kind"), [("leaky_relu", "LeakyReLU"), ("prelu", "PReLU"),
                                                  ("selu", "Activation"), ("mish", "Activation")])
def test_every_activation_builds(activation, kind):
    model = build_mlp(config(f"model.activation={activation}", "model.leaky_slope=0.1")["model"], (28, 28), 10)
    layer = model.get_layer("hidden_01_act")
    assert type(layer).__name__ == kind
    if activation == "leaky_relu":
        assert layer.negative_slope == pytest.approx(0.1)


def test_rrelu_draws_a_slope_per_input_in_training_and_uses_the_mean_slope_at_inference():
    inputs = keras.ops.convert_to_tensor(np.r_[-np.ones(10_000), np.arange(1, 5)].astype("float32"))
    keras.utils.set_random_seed(7)
    layer = RReLU(lower=0.1, upper=0.3)
    first = np.asarray(layer(inputs, training=True))
    slopes = -first[:10_000]
    assert slopes.min() >= 0.1 and slopes.max() <= 0.3 and slopes.mean() == pytest.approx(0.2, abs=0.005)
    assert len(np.unique(slopes)) > 9_000 and np.array_equal(first[10_000:], [1, 2, 3, 4])  # positives kept
    assert not np.array_equal(np.asarray(layer(inputs, training=True)), first)  # afresh at every call
    keras.utils.set_random_seed(7)
    assert np.array_equal(np.asarray(RReLU(lower=0.1, upper=0.3)(inputs, training=True)), first)  # seeded
    np.testing.assert_allclose(np.asarray(layer(inputs, training=False))[:3], [-0.2] * 3, rtol=1e-6)
    assert RReLU.from_config(layer.get_config()).get_config() == layer.get_config()


def test_the_activation_l1_and_bn_settings_reach_the_layers(tmp_path):
    cfg = config("model.activation=rrelu", "model.rrelu_lower=0.05", "model.rrelu_upper=0.25", "model.l1=0.001",
                 "model.l2=0.01", "model.batch_norm=after", "model.bn_epsilon=0.01")
    model = build_mlp(cfg["model"], (28, 28), 10)
    act, bn = model.get_layer("hidden_01_act"), model.get_layer("hidden_01_bn")
    assert (type(act).__name__, act.lower, act.upper, bn.epsilon) == ("RReLU", 0.05, 0.25, pytest.approx(0.01))
    assert sum("seed_generator_state" in v.path for v in model.variables) == 3  # its draws resume (src/resume.py)
    kernels = [layer.kernel for layer in kernel_layers(model)]
    penalty = sum(0.001 * np.abs(k).sum() + 0.01 * np.square(k).sum() for k in map(np.asarray, kernels))
    assert float(sum(model.losses)) == pytest.approx(penalty, rel=1e-5)  # the book's l1_l2, by hand
    assert isinstance(kernel_layers(build_mlp(config("model.l1=0.001")["model"], (28, 28), 10))[0].kernel_regularizer,
                      keras.regularizers.L1)
    model.save(tmp_path / "rrelu.keras")  # logged models load back with the custom layer
    assert type(keras.models.load_model(tmp_path / "rrelu.keras").get_layer("hidden_01_act")) is RReLU

    elu = build_mlp(config("model.activation=elu", "model.elu_alpha=0.5")["model"], (28, 28), 10)
    floor = elu.get_layer("hidden_01_act")(keras.ops.convert_to_tensor([-100.0]))
    assert float(floor[0]) == pytest.approx(-0.5)  # ELU tends to -alpha


@pytest.mark.parametrize(("override", "message"), [
    ("model.rrelu_lower=0.4", "model.rrelu_lower=0.4 is above model.rrelu_upper=0.333333: .*; swap them"),
    ("model.bn_epsilon=0", "model.bn_epsilon"), ("model.elu_alpha=0", "model.elu_alpha"),
    ("model.l1=-0.1", "model.l1")])
def test_impossible_activation_bn_and_l1_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        config(override)


CYCLED = ("optimizer=momentum", "optimizer.learning_rate=0.05", "schedule=one_cycle", "schedule.cycle_momentum=true")


@pytest.mark.parametrize(("overrides", "runs"), [
    (("model.activation=rrelu",), 2), (("model.activation=elu", "model.elu_alpha=0.5"), 1), (("model.l1=0.0001",), 1),
    (("model.l1=0.0001", "model.l2=0.001"), 1), (("model.batch_norm=after", "model.bn_epsilon=0.01"), 1), (CYCLED, 2)],
    ids=["rrelu", "elu_alpha", "l1", "l1_l2", "bn_epsilon", "cycle_momentum"])
def test_each_new_setting_learns_real_images_reproducibly(overrides, runs, fashion_npz, prepared_subset, tmp_path):
    """Two epochs on 2,000 real Fashion-MNIST images: well above chance; RReLU's random slopes and the
    cycled momentum give the same losses twice for a seed, and a saved model loads back."""
    data = load_prepared(prepared_subset(fashion_npz))
    (x_train, y_train), (x_valid, y_valid) = data.split("train"), data.split("valid")
    settings = config("optimizer=nadam", *overrides)
    results = []
    for _ in range(runs):
        keras.utils.set_random_seed(42)
        model = build_mlp(settings["model"], (28, 28), 10)
        model.compile(optimizer=build_optimizer(settings, total_steps=2 * 63), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        history = model.fit(x_train / 255, y_train, epochs=2, batch_size=32, verbose=0)
        results.append((history.history["loss"], model.evaluate(x_valid / 255, y_valid, verbose=0)[1]))
    assert results[0][1] > 0.6 and results == results[:1] * len(results), results  # 10 classes: chance is 0.1
    model.save(tmp_path / "model.keras")  # as MLflow logs it: custom layers and optimizers load back
    assert keras.models.load_model(tmp_path / "model.keras").evaluate(x_valid / 255, y_valid, verbose=0)[1] == \
        results[0][1]


def test_widths_can_differ_per_layer_and_input_dropout_follows_the_input():
    settings = config("model.depth=2", "model.width=[300,100]", "model.input_dropout=0.2")
    model = build_mlp(settings["model"], (28, 28), 10)
    assert [layer.units for layer in kernel_layers(model)] == [300, 100, 10]
    assert layer_types(model)[:3] == ["Flatten", "Dropout", "Dense"]
    with pytest.raises(ConfigError, match="model.width lists 2 layers but model.depth=3"):
        config("model.width=[300,100]")


def test_regularisation_options_reach_the_layers():
    cfg = config("model.dropout=0.1", "model.dropout_kind=alpha_dropout", "model.activation=selu", "model.l2=0.01",
                 "model.max_norm=1.0", "model.kernel_initializer=variance_scaling", "data.scale=standard")
    model = build_mlp(cfg["model"], (28, 28), 10)
    hidden = model.get_layer("hidden_01")
    assert isinstance(hidden.kernel_regularizer, keras.regularizers.L2) and hidden.kernel_constraint.max_value == 1.0
    assert hidden.kernel_initializer.mode == "fan_avg" and hidden.kernel_initializer.scale == 2.0
    assert isinstance(model.get_layer("hidden_01_dropout"), keras.layers.AlphaDropout)


def test_mc_dropout_samples_at_inference_and_keeps_the_weights():
    model = build_mlp(config("model.dropout=0.5")["model"], (28, 28), 10)
    images = np.random.default_rng(0).random((8, 28, 28), dtype=np.float32)
    sampler = mc_dropout_model(model)
    assert np.allclose(model(images), model(images))  # plain inference: dropout off
    assert not np.allclose(sampler(images), sampler(images))  # MC: a new mask each pass
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), sampler.get_weights(), strict=True))


def test_mc_dropout_passes_draw_a_new_mask_per_pass_over_every_batch():
    model = build_mlp(config("model.dropout=0.5")["model"], (28, 28), 10)
    images = np.random.default_rng(0).random((MC_DROPOUT_BATCH + 10, 28, 28), dtype=np.float32)  # two batches
    keras.utils.set_random_seed(5)
    passes = mc_dropout_passes(model, images, 50)
    assert passes.shape == (50, len(images), 10) and np.allclose(passes.sum(axis=2), 1, atol=1e-5)
    one, averaged = passes[0], passes.mean(axis=0)
    assert not np.allclose(one, passes[1])  # each pass its own masks, in both batches
    assert not np.allclose(one[-10:], passes[1][-10:])
    plain = predict(model, images)  # dropout off; the average of many masks comes closer to it
    assert np.allclose(plain, keras.ops.convert_to_numpy(model(images)), atol=1e-6)
    assert np.abs(averaged - plain).mean() < np.abs(one - plain).mean()


@pytest.mark.parametrize("option", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamax",
                                    "nadam", "adamw"])
def test_every_optimizer_builds_with_its_settings_and_clipping(option):
    cfg = config(f"optimizer={option}", "clipping=global_norm", "clipping.global_clipnorm=2")
    optimizer = build_optimizer(cfg, total_steps=100)
    assert optimizer.global_clipnorm == 2.0
    assert float(optimizer.learning_rate) == pytest.approx(cfg["optimizer"]["learning_rate"])
    if option == "nesterov":
        assert optimizer.nesterov and optimizer.momentum == 0.9


@pytest.mark.parametrize(("option", "step", "expected"), [
    ("exponential", 20_000, 0.001), ("inverse_time", 10_000, 0.005), ("piecewise", 60_000, 0.005)])
def test_per_step_schedules_follow_the_books_formulas(option, step, expected):
    optimizer = build_optimizer(config(f"schedule={option}"), total_steps=100_000)  # lr0 = 0.01
    optimizer.iterations.assign(step)
    assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-5)


def test_per_epoch_schedules_are_callbacks_with_the_books_functions():
    (exponential,) = schedule_callbacks(config("schedule=exponential_epoch"))
    assert exponential.schedule(20) == pytest.approx(0.001)
    assert exponential.schedule(10) == pytest.approx(0.01 * 0.1**0.5)
    (piecewise,) = schedule_callbacks(config("schedule=piecewise_epoch"))
    rates = [piecewise.schedule(epoch) for epoch in (0, 4, 5, 14, 15)]
    assert rates == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.001])
    (plateau,) = schedule_callbacks(config("schedule=plateau"))
    assert plateau.factor == 0.5 and plateau.patience == 5
    assert schedule_callbacks(config("schedule=exponential")) == []  # per step: inside the optimizer


def test_one_cycle_rises_to_the_peak_then_anneals_far_below_the_start():
    schedule = OneCycle(peak=0.1, total_steps=1000)
    rates = list(np.asarray(schedule(np.arange(1000))))  # element-wise: each step's rate
    peak_at = int(np.argmax(rates))
    assert rates[0] == pytest.approx(0.01) and max(rates) == pytest.approx(0.1, rel=1e-3)
    assert 400 <= peak_at <= 460 and rates[900] == pytest.approx(0.01, rel=0.05)
    assert float(schedule(1000)) == pytest.approx(0.01 / 1000, rel=1e-3)  # after the last step
    assert OneCycle.from_config(schedule.get_config()).get_config() == schedule.get_config()


@pytest.mark.parametrize("iterations", [5280, 10750, 999, 7])  # exercise 8's and the schedules' runs, and small ones
def test_one_cycle_is_the_books_one_cycle_scheduler_step_for_step(iterations):
    """The book's OneCycleScheduler (its notebook, "1Cycle scheduling"), as it sets each batch's rate."""
    max_lr = 0.05
    start, last = max_lr / 10, max_lr / 10 / 1000
    last_iterations = iterations // 10 + 1
    half = (iterations - last_iterations) // 2

    def book(iteration):
        def interpolate(iter1, iter2, lr1, lr2):
            return (lr2 - lr1) * (iteration - iter1) / (iter2 - iter1) + lr1
        if iteration < half:
            return interpolate(0, half, start, max_lr)
        if iteration < 2 * half:
            return interpolate(half, 2 * half, max_lr, start)
        return interpolate(2 * half, iterations, start, last)

    ours = OneCycle(peak=max_lr, total_steps=iterations)
    steps = np.arange(iterations)
    # Every step in one call: the schedule is element-wise, so each rate is the one the optimizer's
    # scalar call gives (checked on a sample), without 10,000 eager calls.
    rates = np.asarray(ours(steps))
    assert [rates[step] for step in steps[::997]] == [float(ours(int(step))) for step in steps[::997]]
    np.testing.assert_allclose(rates, [book(step) for step in steps], rtol=1e-5, atol=1e-9)  # float32


def test_one_cycle_momentum_mirrors_the_rate_and_sgd_steps_with_it():
    schedule = OneCycle(peak=0.05, total_steps=40)  # half = 17 steps, tail 6
    momentum = np.asarray(schedule.momentum(np.arange(40), 0.95, 0.85))
    assert momentum[0] == pytest.approx(0.95) and momentum[17] == pytest.approx(0.85)
    assert momentum[34:] == pytest.approx([0.95] * 6) and np.all(np.diff(momentum[:18]) < 0)
    assert np.all(np.diff(momentum[17:35]) > 0)

    optimizer = build_optimizer(config("optimizer=momentum", "optimizer.learning_rate=0.05", "schedule=one_cycle",
                                       "schedule.cycle_momentum=true"), total_steps=40)
    assert type(optimizer) is OneCycleSGD and optimizer.get_config()["max_momentum"] == 0.95
    weight, gradient = keras.Variable([1.0, -2.0]), keras.ops.convert_to_tensor([0.5, 0.25])
    expected, velocity = np.array([1.0, -2.0]), np.zeros(2)
    rates = np.asarray(schedule(np.arange(40)))
    for step in range(40):  # SGD with momentum, by hand: v <- mu_t v - lr_t g; w <- w + v
        optimizer.apply_gradients([(gradient, weight)])
        velocity = momentum[step] * velocity - rates[step] * np.array([0.5, 0.25])
        expected = expected + velocity
    np.testing.assert_allclose(np.asarray(weight), expected, rtol=1e-5)
    # Off by default: the book's 1cycle runs keep Keras's own SGD and its fixed momentum.
    assert type(build_optimizer(config("optimizer=momentum", "schedule=one_cycle"), 40)) is keras.optimizers.SGD
    with pytest.raises(ConfigError, match="schedule.cycle_momentum=true cycles SGD's momentum, but optimizer=adam"):
        config("optimizer=adam", "schedule=one_cycle", "schedule.cycle_momentum=true")
    with pytest.raises(ConfigError, match="schedule.min_momentum=0.99 is above schedule.max_momentum=0.95; swap"):
        config("schedule=one_cycle", "schedule.cycle_momentum=true", "schedule.min_momentum=0.99")


def test_gradient_diagnostics_measure_without_changing_the_model():
    model = build_mlp(config("model.batch_norm=after", "model.dropout=0.2", "model.depth=4")["model"], (28, 28), 10)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).random((64, 28, 28), dtype=np.float32)
    labels = np.arange(64) % 10
    logged = []
    diagnostics = GradientDiagnostics(images, labels, lambda step, values: logged.append((step, values)))
    diagnostics.set_model(model)
    before = [variable.numpy().copy() for variable in model.variables]
    values = diagnostics.measure(0)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables, strict=True))
    assert set(values) >= {"grad_norm/hidden_01", "grad_norm/output", "act_mean/hidden_04", "act_std/hidden_04"}
    assert all(np.isfinite(value) and value >= 0 for key, value in values.items() if key.startswith("grad"))
    assert values == diagnostics.measure(0)  # same batch, same state: same numbers


def test_validation_split_holds_out_the_end_of_the_full_training_file(fashion_npz):
    data = load_prepared(fashion_npz)
    held = reshape_splits(data, validation_split=0.1)
    full_x = np.concatenate([data.split("train")[0], data.split("valid")[0]])  # valid = the file's last 5,000
    assert len(held.split("train")[0]) == 54_000 and len(held.split("valid")[0]) == 6_000
    assert np.array_equal(held.split("valid")[0], full_x[-6_000:])
    small = reshape_splits(data, train_size=1_000, validation_split=0.1)
    assert len(small.split("train")[0]) == 900 and np.array_equal(small.split("valid")[0], full_x[900:1000])
    assert np.array_equal(small.split("test")[0], data.split("test")[0])
