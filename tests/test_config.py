"""The training config: every file composes and validates, bad values are one clear line.

Fast: nothing trains. Only the optimizer checks import Keras; the command-line tests
run `python -m src.train` with MLflow pointed at a temporary store and Hydra's output
folders under tmp_path, so nothing lands in the repository.
"""

import inspect
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from src.config import LIMITS, OPTIMIZER_ARGS, SCHEDULES, declared, section_limits, validate
from src.errors import ConfigError
from src.families import FAMILIES

CONF = REPO / "conf"
GROUPS = sorted(path.name for path in CONF.iterdir()  # a folder without options is no group yet
                if path.is_dir() and path.name != "hydra" and any(path.glob("*.yaml")))
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
# What an option cannot do without: a pretrained image model needs colour images at its size.
NEEDS = {("model", "mobilenet_v2"): ("data=cifar10", "data.resize=[96,96]")}
COMMENTED = [CONF / "config.yaml", *(path for group in ("model", "optimizer", "clipping", "schedule", "tracking")
                                     for path in sorted((CONF / group).glob("*.yaml")))]


@pytest.fixture(scope="module")
def compose_config():
    """compose_config(*overrides) -> the job config as `python -m src.train` composes it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        def composed(*overrides: str):
            cfg = compose("config", overrides=list(overrides))
            if "hydra" in cfg:
                with open_dict(cfg):
                    del cfg["hydra"]
            return cfg
        yield composed


# -- 1. every file composes and validates; every value is commented -------------------------------

def test_every_ablation_axis_is_a_config_group():
    assert {"data", "model", "optimizer", "clipping", "schedule", "tracking"} <= set(GROUPS)


def test_the_default_config_validates(compose_config):
    config = validate(compose_config())
    assert config["optimizer"]["name"] == "sgd" and config["model"]["name"] == "mlp"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{group}/{option}" for group, option in OPTIONS])
def test_every_group_option_composes_and_validates(compose_config, group, option):
    validate(compose_config(f"{group}={option}", *NEEDS.get((group, option), ())))


# The chapter's two summary tables (Table 11-3, Table 11-4) as the values each preset sets.
PRESETS = {
    "deep_default": {"model.kernel_initializer": "he_normal", "model.activation": "swish",
                     "model.batch_norm": "before", "optimizer.nesterov": True, "schedule.name": "reduce_lr_on_plateau",
                     "early_stopping.patience": 10, "data.scale": "standard"},
    "self_normalizing": {"model.kernel_initializer": "lecun_normal", "model.activation": "selu",
                         "model.batch_norm": "none", "optimizer.nesterov": True,
                         "schedule.name": "reduce_lr_on_plateau", "early_stopping.patience": 10,
                         "data.scale": "standard"},
}


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_sets_its_guideline_table_and_yields_to_the_command_line(compose_config, preset):
    config = validate(compose_config(f"preset={preset}", "data=cifar10", "model.depth=20"))
    for key, value in PRESETS[preset].items():
        assert OmegaConf.select(OmegaConf.create(config), key) == value, key
    assert config["data"]["name"] == "cifar10" and config["model"]["depth"] == 20
    assert validate(compose_config(f"preset={preset}", "optimizer=adamw"))["optimizer"]["name"] == "adamw"
    assert validate(compose_config(f"preset={preset}", "early_stopping.patience=3"))["early_stopping"]["patience"] == 3


@pytest.mark.parametrize("path", [CONF / group / f"{option}.yaml" for group, option in OPTIONS],
                         ids=[f"{group}/{option}" for group, option in OPTIONS])
def test_every_group_file_opens_with_a_header_comment(path):
    first = path.read_text().splitlines()[0]
    assert re.match(r"#\s*\S", first), f"{path.relative_to(REPO)} should open with '# <what it is>'"


def uncommented_lines(path) -> list[str]:
    """Lines that set a value (`key: value`, `- item`) without an inline `# ...` comment.

    Lines that only open a mapping (`hydra:`) set nothing; a group file's top-level `name:`
    is the option's identifier and is explained by the header comment.
    """
    missing = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        body, _, comment = line.partition(" #")
        if re.fullmatch(r"\s*[\w.]+:\s*", body) or (path.parent != CONF and line.startswith("name:")):
            continue
        if not comment.strip():
            missing.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    return missing


def test_every_value_line_has_an_inline_comment():
    missing = [line for path in COMMENTED for line in uncommented_lines(path)]
    assert not missing, f"{len(missing)} lines set a value without a comment:\n" + "\n".join(missing)


# -- 2. OPTIMIZER_ARGS and the optimizer files agree with Keras ------------------------------------

def keras_parameters(name: str) -> set[str]:
    """What the Keras optimizer `name` takes (its constructor's parameters)."""
    keras = pytest.importorskip("keras")
    return set(inspect.signature(type(keras.optimizers.get(name)).__init__).parameters)


@pytest.mark.parametrize("name", sorted(OPTIMIZER_ARGS))
def test_optimizer_args_are_keras_constructor_parameters(name):
    parameters = keras_parameters(name)
    assert "learning_rate" in parameters
    assert set(OPTIMIZER_ARGS[name]) <= parameters, (
        f"keras optimizer {name} does not take {sorted(set(OPTIMIZER_ARGS[name]) - parameters)}")


@pytest.mark.parametrize("path", sorted((CONF / "optimizer").glob("*.yaml")), ids=lambda path: path.stem)
def test_optimizer_files_use_only_keras_arguments(compose_config, path):
    # Composed, as the trainer sees it: a file may extend another through its defaults list.
    settings = dict(compose_config(f"optimizer={path.stem}")["optimizer"])
    name = settings.pop("name")
    assert name in OPTIMIZER_ARGS, f"{path.name}: name {name!r} is not in src.config.OPTIMIZER_ARGS"
    assert "learning_rate" in settings and set(settings) <= keras_parameters(name)


# -- 2b. each key is declared once, in conf/; the limits in src/ only name declared keys ------------

def group_keys(group: str, name: str | None = None) -> set[str]:
    """The keys the files of conf/<group>/ declare (those whose `name` is `name`, when given)."""
    files = [yaml.safe_load(path.read_text()) for path in (CONF / group).glob("*.yaml")]
    return {key for values in files if name is None or values.get("name") == name for key in values} - {"defaults"}


def test_every_limit_names_a_key_that_conf_declares():
    top = yaml.safe_load((CONF / "config.yaml").read_text())
    dead = [key for key, limit in LIMITS.items() if not isinstance(limit, dict) and key not in top]
    dead += [f"{section}.{key}" for section, limits in LIMITS.items() if isinstance(limits, dict)
             for key in set(limits) - set(top.get(section) or group_keys(section))]
    for group, named in (("optimizer", OPTIMIZER_ARGS), ("schedule", SCHEDULES),
                         ("model", {name: family.limits for name, family in FAMILIES.items()})):
        dead += [f"{group}.{key} ({name})" for name, limits in named.items()
                 for key in set(limits) - group_keys(group, name)]
    assert not dead, f"limits for keys no conf/ file declares: {dead}"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{group}/{option}" for group, option in OPTIONS])
def test_a_key_whose_default_is_null_has_its_type_stated_in_a_limit(compose_config, group, option):
    config = OmegaConf.to_container(compose_config(f"{group}={option}", *NEEDS.get((group, option), ())))
    limits = section_limits(config)

    def unstated(defaults: dict, limits: dict, where: str) -> list[str]:
        return [name for key, default in defaults.items() for name in (
            unstated(default, limits.get(key, {}), f"{where}{key}.") if isinstance(default, dict)
            else [f"{where}{key}"] if default is None and key not in limits else [])]
    assert not unstated(declared(config), limits, "")


# -- 3. bad configs are one ConfigError line that names the key -----------------------------------

BAD_CONFIGS = [
    pytest.param(["+model.foo=1"], ["unknown key model.foo", "remove it or fix the name"], id="unknown-model-key"),
    pytest.param(["+foo=1"], ["unknown key foo", "top level"], id="unknown-top-level-key"),
    pytest.param(["optimizer=sgd", "+optimizer.beta_1=0.9"], ["unknown key optimizer.beta_1"],
                 id="argument-of-another-optimizer"),
    pytest.param(["epochs=abc"], ["epochs=abc ", "integer"], id="epochs-not-a-number"),
    pytest.param(["model.depth=2.5"], ["model.depth=2.5", "integer"], id="depth-not-an-integer"),
    pytest.param(["optimizer.learning_rate=fast"], ["optimizer.learning_rate=fast ", "number"],
                 id="learning-rate-not-a-number"),
    pytest.param(["data.flatten=1"], ["data.flatten=1 ", "true or false"], id="type-from-the-default"),
    pytest.param(["tracking.log_model=yes"], ["tracking.log_model=yes ", "true or false"],
                 id="boolean-from-the-default"),
    pytest.param(["model.batch_norm=true"], ["model.batch_norm=", "none, after, before"], id="batch-norm-boolean"),
    pytest.param(["optimizer.learning_rate=-0.1"], ["optimizer.learning_rate=-0.1", "(0, inf)"],
                 id="negative-learning-rate"),
    pytest.param(["optimizer.learning_rate=0"], ["optimizer.learning_rate=0", "(0, inf)"], id="zero-learning-rate"),
    pytest.param(["optimizer.learning_rate=inf"], ["optimizer.learning_rate=inf", "finite"],
                 id="infinite-learning-rate"),
    pytest.param(["optimizer=sgd", "optimizer.momentum=1.0"], ["optimizer.momentum=1.0", "[0, 1)"],
                 id="momentum-one"),
    pytest.param(["model.dropout=1.0"], ["model.dropout=1.0", "[0, 1)"], id="dropout-one"),
    pytest.param(["model.dropout=-0.1"], ["model.dropout=-0.1", "[0, 1)"], id="dropout-negative"),
    pytest.param(["clipping=norm", "clipping.clipnorm=0"], ["clipping.clipnorm=0"], id="clipnorm-zero"),
    pytest.param(["clipping=value", "clipping.clipvalue=-1"], ["clipping.clipvalue=-1"], id="clipvalue-negative"),
    pytest.param(["clipping.clipnorm=1", "clipping.clipvalue=1"], ["clipvalue", "clipnorm", "takes one"],
                 id="two-clippings"),
    pytest.param(["model.activation=selu", "model.batch_norm=after"],
                 ["model.activation=selu", "model.batch_norm=after", "model.batch_norm=none"], id="selu-with-bn"),
    pytest.param(["mc_dropout_samples=10"], ["mc_dropout_samples", "model.dropout"], id="mc-dropout-without-dropout"),
    pytest.param(["validation_split=0"], ["validation_split=0", "(0, 1)"], id="validation-split-zero"),
    pytest.param(["validation_split=1.5"], ["validation_split=1.5", "(0, 1)"], id="validation-split-above-one"),
    pytest.param(["batch_size=0"], ["batch_size=0", "integer >= 1"], id="batch-size-zero"),
    pytest.param(["epochs=0"], ["epochs=0", "integer >= 1"], id="epochs-zero"),
    pytest.param(["precision=float64"], ["precision=float64 ", "mixed_float16"], id="precision-float64"),
    pytest.param(["schedule=piecewise", "schedule.multipliers=[1.0,0.5]"], ["schedule.multipliers", "[1.0, 0.5]"],
                 id="piecewise-multipliers-mismatch"),
    pytest.param(["schedule=piecewise", "schedule.boundaries=[80000,50000]"], ["schedule.boundaries must increase"],
                 id="piecewise-boundaries-decrease"),
    pytest.param(["schedule.name=cosine"], ["schedule.name='cosine'", "schedule=<option>"], id="unknown-schedule"),
    pytest.param(["name=../evil"], ["name=../evil ", "letters, digits"], id="name-path-traversal"),
    pytest.param(["name="], ["name= must"], id="name-empty"),
    pytest.param(["name=a: b "], ["name=a: b "], id="name-yaml-injection"),
]


@pytest.mark.parametrize(("overrides", "fragments"), BAD_CONFIGS)
def test_bad_config_is_one_line_naming_the_key(compose_config, overrides, fragments):
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError) as raised:
        validate(cfg)
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


# -- 4. the command line ------------------------------------------------------------------------

def run_train(*args: str, store, python_flags=()) -> subprocess.CompletedProcess:
    """`python -m src.train args` from the repo root, MLflow pointed at store/mlflow.db."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3",
           "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    return subprocess.run([sys.executable, *python_flags, "-m", "src.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


CLI_ERRORS = {  # case -> (overrides, fragments of the error line)
    "unknown-option": (["optimizer=adamm"], ["adamm", "optimizer"]),
    "unknown-key": (["epochz=3"], ["epochz", "+epochz=3"]),
    "bad-value": (["optimizer.learning_rate=-1"], ["optimizer.learning_rate=-1", "(0, inf)"]),
    "selu-with-bn": (["model.activation=selu", "model.batch_norm=after"], ["selu", "model.batch_norm=none"]),
}


@pytest.fixture(scope="module")
def cli_error(tmp_path_factory):
    """cli_error(case) -> (result, store dir); each case runs once for the tests below."""
    results = {}

    def run(case: str):
        if case not in results:
            store = tmp_path_factory.mktemp(case)
            results[case] = run_train(*CLI_ERRORS[case][0], f"hydra.run.dir={store / 'run'}", store=store), store
        return results[case]
    return run


@pytest.mark.parametrize("case", CLI_ERRORS)
def test_cli_user_error_exits_2_with_an_error_line_and_no_store(cli_error, case):
    result, store = cli_error(case)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = stderr_lines(result)[-1]
    assert last.startswith("error: ")
    for fragment in CLI_ERRORS[case][1]:
        assert fragment in last
    assert not (store / "mlflow.db").exists(), "the config was checked only after MLflow was touched"


@pytest.mark.parametrize("case", CLI_ERRORS)
def test_cli_user_error_is_exactly_one_stderr_line(cli_error, case):
    result, _ = cli_error(case)
    assert len(stderr_lines(result)) == 1, result.stderr


def imported_packages(result) -> set[str]:
    """Top-level packages named in `python -X importtime` output."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()
            if line.startswith("import time:")}


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"]], ids=["help", "cfg-job"])
def test_help_and_cfg_answer_without_importing_tensorflow(tmp_path, args):
    result = run_train(*args, store=tmp_path, python_flags=["-X", "importtime"])
    assert result.returncode == 0, result.stderr[-2000:]
    packages = imported_packages(result)
    assert "hydra" in packages  # the import trace really was read
    assert not packages & {"tensorflow", "keras", "mlflow"}
    if args == ["--help"]:
        groups = result.stdout.split("== Config groups", 1)[1].split("== Config (", 1)[0]
        for group in GROUPS:
            assert re.search(rf"^{group}: ", groups, re.MULTILINE), f"--help does not list group {group}"
        assert "Examples" in result.stdout
    else:
        assert "optimizer:" in result.stdout and "learning_rate" in result.stdout
        config = yaml.safe_load(result.stdout)
        assert set(config["optimizer"]) >= {"name", "learning_rate"}
    assert not (tmp_path / "mlflow.db").exists()


# -- 5. a sweep with one bad job trains nothing ---------------------------------------------------

def test_sweep_with_a_bad_job_is_refused_before_anything_trains(tmp_path):
    result = run_train("-m", "optimizer=adam,nadam", "optimizer.learning_rate=0.001,-1",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}", store=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: job (optimizer=adam optimizer.learning_rate=-1)")
    assert "learning_rate" in lines[0].split("):", 1)[1] and "nothing was trained" in lines[0]
    assert not (tmp_path / "sweep" / "0").exists()
    if (tmp_path / "mlflow.db").exists():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        experiments = [experiment.experiment_id for experiment in client.search_experiments()]
        assert not experiments or not client.search_runs(experiments)
