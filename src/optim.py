"""Optimizers, gradient clipping and learning-rate schedules from config.

Per-step schedules live inside the optimizer as a LearningRateSchedule, so they stay exact
with steps_per_execution > 1 (batch callbacks fire once per execution, not per step).
Per-epoch schedules and ReduceLROnPlateau are Keras callbacks, as in the book.
"""

import bisect
import math

import keras

STEP_SCHEDULES = {
    "exponential_decay": lambda lr, s, total: keras.optimizers.schedules.ExponentialDecay(
        lr, s["decay_steps"], s["decay_rate"], staircase=s["staircase"]),
    "inverse_time_decay": lambda lr, s, total: keras.optimizers.schedules.InverseTimeDecay(
        lr, s["decay_steps"], s["decay_rate"], staircase=s["staircase"]),
    "piecewise_constant_decay": lambda lr, s, total: keras.optimizers.schedules.PiecewiseConstantDecay(
        s["boundaries"], [lr * m for m in s["multipliers"]]),
    "one_cycle": lambda lr, s, total: OneCycle(lr, total, s["initial_divisor"], s["final_divisor"],
                                               s["tail_fraction"]),
}


def build_optimizer(cfg: dict, total_steps: int) -> keras.optimizers.Optimizer:
    """The optimizer of cfg.optimizer, with cfg.clipping and a per-step cfg.schedule if any."""
    settings = {**cfg["optimizer"], **{key: value for key, value in cfg["clipping"].items() if value is not None}}
    name = settings.pop("name")
    # Keras wants floats (`momentum=0` from the command line is an int): every number here is one.
    settings = {key: float(value) if type(value) is int else value for key, value in settings.items()}
    schedule = cfg["schedule"]
    if schedule["name"] in STEP_SCHEDULES and schedule.get("per", "step") == "step":
        settings["learning_rate"] = STEP_SCHEDULES[schedule["name"]](settings["learning_rate"], schedule, total_steps)
    if schedule.get("cycle_momentum"):  # one_cycle with SGD (src/config.py checks): momentum cycles the other way
        settings.pop("momentum")
        return OneCycleSGD(max_momentum=schedule["max_momentum"], min_momentum=schedule["min_momentum"], **settings)
    return type(keras.optimizers.get(name))(**settings)


def schedule_callbacks(cfg: dict) -> list[keras.callbacks.Callback]:
    """Keras callbacks for the per-epoch schedules and ReduceLROnPlateau ([] otherwise)."""
    schedule, lr0 = cfg["schedule"], cfg["optimizer"]["learning_rate"]
    if schedule["name"] == "reduce_lr_on_plateau":
        return [keras.callbacks.ReduceLROnPlateau(monitor=schedule["monitor"], factor=schedule["factor"],
                                                  patience=schedule["patience"], min_lr=schedule["min_lr"])]
    if schedule.get("per") != "epoch":
        return []
    if schedule["name"] == "exponential_decay":
        def rate(epoch: int) -> float:
            exponent = epoch / schedule["decay_steps"]
            return lr0 * schedule["decay_rate"] ** (math.floor(exponent) if schedule["staircase"] else exponent)
    elif schedule["name"] == "inverse_time_decay":
        def rate(epoch: int) -> float:
            exponent = epoch / schedule["decay_steps"]
            return lr0 / (1 + schedule["decay_rate"] * (math.floor(exponent) if schedule["staircase"] else exponent))
    else:  # piecewise_constant_decay
        def rate(epoch: int) -> float:
            return lr0 * schedule["multipliers"][bisect.bisect_right(schedule["boundaries"], epoch)]
    return [keras.callbacks.LearningRateScheduler(rate)]


@keras.saving.register_keras_serializable(package="ch11")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """The book's 1cycle (its OneCycleScheduler, step for step): linear up to the peak over the
    first half, linear down to the start rate over the second, then down to start/final_divisor
    over the tail. The book's tail is iterations // 10 + 1 steps: int(total * tail_fraction) + 1."""

    def __init__(self, peak: float, total_steps: int, initial_divisor: float = 10.0,
                 final_divisor: float = 1000.0, tail_fraction: float = 0.1):
        self.peak, self.total_steps = peak, total_steps
        self.initial_divisor, self.final_divisor, self.tail_fraction = initial_divisor, final_divisor, tail_fraction
        self.start = peak / initial_divisor
        self.half = max(1, (total_steps - int(total_steps * tail_fraction + 1e-9) - 1) // 2)
        self.tail = max(1, total_steps - 2 * self.half)  # the rest, as the book interpolates to `iterations`

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        up = self.start + (self.peak - self.start) * step / self.half
        down = self.peak - (self.peak - self.start) * (step - self.half) / self.half
        end = self.start / self.final_divisor
        anneal = self.start - (self.start - end) * keras.ops.minimum(
            (step - 2 * self.half) / self.tail, 1.0)
        return keras.ops.where(step < self.half, up, keras.ops.where(step < 2 * self.half, down, anneal))

    def momentum(self, step, high: float, low: float):
        """Smith's momentum cycle, the rate's mirror image: high down to low over the first half, back
        up to high over the second, high through the tail."""
        step = keras.ops.cast(step, "float32")
        down = high - (high - low) * step / self.half
        up = low + (high - low) * (step - self.half) / self.half
        return keras.ops.where(step < self.half, down, keras.ops.where(step < 2 * self.half, up, high))

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total_steps, "initial_divisor": self.initial_divisor,
                "final_divisor": self.final_divisor, "tail_fraction": self.tail_fraction}


@keras.saving.register_keras_serializable(package="ch11")
class OneCycleSGD(keras.optimizers.SGD):
    """SGD on a OneCycle rate whose momentum cycles too (Smith 2018; the book's text describes it,
    its notebook's OneCycleScheduler does not do it): max_momentum -> min_momentum while the rate
    rises, back while it falls. Keras's SGD fixes its momentum when the train step is traced, so
    the update is SGD's own with that step's momentum in its place."""

    def __init__(self, learning_rate: OneCycle, max_momentum: float = 0.95, min_momentum: float = 0.85, **kwargs):
        kwargs.pop("momentum", None)  # from get_config: the cycle sets it
        super().__init__(learning_rate=learning_rate, momentum=max_momentum, **kwargs)
        self.max_momentum, self.min_momentum = max_momentum, min_momentum

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = keras.ops.cast(learning_rate, variable.dtype)
        gradient = keras.ops.cast(gradient, variable.dtype)
        momentum = keras.ops.cast(self._learning_rate.momentum(self.iterations, self.max_momentum, self.min_momentum),
                                  variable.dtype)
        velocity = self.momentums[self._get_variable_index(variable)]
        self.assign(velocity, velocity * momentum - gradient * learning_rate)
        if self.nesterov:
            self.assign_add(variable, velocity * momentum - gradient * learning_rate)
        else:
            self.assign_add(variable, velocity)

    def get_config(self) -> dict:
        return {**super().get_config(), "max_momentum": self.max_momentum, "min_momentum": self.min_momentum}
