"""Compiled models kept from one job to the next of the same graph, in one process.

Tracing a model's train and test functions costs seconds per job (a 50-layer MLP: ~6 s, more
than its one epoch of training), and every job used to pay it afresh. Jobs whose graphs are
the same -- the seeds of an arm, arms that differ only in the initial weights or the learning
rate -- now share one compiled model per process:

1. the job builds its model and optimizer as before (cheap: nothing is traced), so every
   random draw of a fresh build happens, in the same order;
2. if a model with the same graph was compiled by an earlier job here (graph_key: layers,
   their settings and trainability, optimizer and its settings but for a constant learning
   rate, loss, metrics, steps per call, determinism), the fresh model's variables (weights,
   BN statistics, dropout and RReLU seed states) and the fresh optimizer's (step counter,
   learning rate, zeroed slots) are copied into it, and it trains in the job's place;
3. else the fresh model is compiled and kept for the next job.

Nothing else survives a job: the metrics reset at every epoch and evaluation, callbacks and
data pipelines are the job's own. So a job's numbers are those of a fresh build, to the bit
(tests/test_compiled.py: with BN, dropout and a per-step schedule). What the graph key does
not cover (other input shapes) Keras retraces by itself.
"""

import json
import logging
from collections import OrderedDict
from collections.abc import Callable

import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

log = logging.getLogger(__name__)
KEEP = 16  # graphs kept per process (least recently used go first); a 50 x 100 MLP is ~2 MB
_kept: OrderedDict[str, keras.Model] = OrderedDict()
reuses = 0  # jobs that trained a kept model, in this process


def forget() -> None:
    """Drop the kept models: the next job of every graph builds and traces afresh."""
    _kept.clear()


def compile_or_reuse(model: keras.Model, optimizer: keras.optimizers.Optimizer, **compile_args) -> keras.Model:
    """The model that trains this job: a kept one with the same graph, now holding model's and
    optimizer's initial state, or model itself, compiled (and kept)."""
    key = graph_key(model, optimizer, compile_args)
    kept = _kept.get(key)
    if kept is None:
        model.compile(optimizer=optimizer, **compile_args)
        _kept[key] = model
        while len(_kept) > KEEP:
            _kept.popitem(last=False)
        return model
    global reuses
    _kept.move_to_end(key)
    reuses += 1
    log.info("training the compiled model of an earlier job of the same graph in this process (no tracing)")
    copy_variables(model, kept)
    optimizer.build(model.trainable_variables)  # its initial slots: zeros, or Nadam's product of 1
    assign_all(kept.optimizer.variables, optimizer.variables)
    return kept


def graph_key(model: keras.Model, optimizer: keras.optimizers.Optimizer, compile_args: dict) -> str:
    """What the traced functions depend on, as text: equal keys, same graphs."""
    settings = optimizer.get_config()
    if not isinstance(settings.get("learning_rate"), dict):  # a variable; a schedule is part of the graph
        settings.pop("learning_rate", None)
    return json.dumps({"model": without_initial_values(model.get_config()),
                       "optimizer": [type(optimizer).__module__, type(optimizer).__qualname__, settings],
                       "compile": compile_args, "policy": keras.mixed_precision.global_policy().name,
                       "deterministic": tf_config.is_op_determinism_enabled()}, sort_keys=True, default=repr)


def without_initial_values(config):
    """A layer config without what only draws initial values (initializers, seeds)."""
    if isinstance(config, dict):
        return {key: without_initial_values(value) for key, value in config.items()
                if not (key.endswith("_initializer") or key == "seed")}
    if isinstance(config, list):
        return [without_initial_values(value) for value in config]
    return config


def copy_variables(source: keras.Model, target: keras.Model) -> None:
    """Every layer's state, seed generators included (not the compiled metrics: they reset themselves)."""
    assign_all([v for layer in target.layers for v in layer.variables],
               [v for layer in source.layers for v in layer.variables])


def assign_all(targets: list, sources: list) -> None:
    if len(targets) != len(sources):
        raise RuntimeError(f"a kept model's state does not match the job's: {len(targets)} against "
                           f"{len(sources)} variables")
    for target, source in zip(targets, sources, strict=True):
        if tuple(target.shape) != tuple(source.shape) or target.dtype != source.dtype:
            raise RuntimeError(f"a kept model's variable {target.path} does not match the job's {source.path}")
        target.assign(source.value if hasattr(source, "value") else source)


def traced(model: keras.Model, name: str, make: Callable[[], Callable]) -> Callable:
    """A tf.function made once per (model, name): kept models keep theirs, so it is traced once.

    The functions live on the model itself (not in a table of this module, whose entries would
    hold their model alive through the function's closure), so a model no longer kept or used
    is freed with its functions."""
    functions = model.__dict__.setdefault("_traced_functions", {})  # past Keras' attribute tracking
    if name not in functions:
        functions[name] = tf.function(make(), reduce_retracing=True)
    return functions[name]
