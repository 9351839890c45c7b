"""Which jobs a sweep runs (src/sweep.py expand_jobs): Hydra's grid, then an arm's own values
(hydra.sweeper.arm_params), narrowed by the command line; and a real sweep that widens one arm."""

import json

import pytest
from conftest import cli, parent_and_children, shrunk
from hydra.core.override_parser.overrides_parser import OverridesParser

from src.errors import ConfigError
from src.sweep import expand_jobs, experiment_jobs

GRID = ["+variant/x=a,b", "seed=42,43"]
MORE_SEEDS_FOR_B = {"+variant/x": {"b": {"seed": "range(42,46)"}}}


def jobs(arguments: list[str], arm_params: dict | None = MORE_SEEDS_FOR_B) -> list[str]:
    found, _ = expand_jobs(OverridesParser.create(), GRID, arguments, arm_params)
    return [" ".join(job) for job in found]


def test_an_arm_sweeps_its_own_seeds_in_place_of_the_grids_and_each_job_runs_once():
    assert jobs([]) == ["+variant/x=a seed=42", "+variant/x=a seed=43",
                        *(f"+variant/x=b seed={seed}" for seed in range(42, 46))]
    assert jobs([], arm_params=None) == jobs([], arm_params={})  # without arm_params: Hydra's grid, as it was
    assert len(jobs([], arm_params=None)) == 4


def test_the_command_line_still_wins_over_an_arms_own_values():
    assert jobs(["seed=44"]) == ["+variant/x=a seed=44", "+variant/x=b seed=44"]  # seed=... narrows every arm
    assert jobs(["+variant/x=a"]) == ["+variant/x=a seed=42", "+variant/x=a seed=43"]  # the arm left out
    assert jobs(["+variant/x=b", "epochs=1"])[0] == "+variant/x=b seed=42 epochs=1"  # other overrides kept


def test_a_key_only_an_arm_sweeps_counts_as_swept():
    found, swept = expand_jobs(OverridesParser.create(), ["+variant/x=a,b", "seed=42"], [],
                               {"+variant/x": {"a": {"seed": "42,43", "epochs": "3"}}})
    assert [" ".join(job) for job in found] == ["+variant/x=a seed=42 epochs=3", "+variant/x=a seed=43 epochs=3",
                                                "+variant/x=b seed=42"]
    assert swept == {"+variant/x", "seed"}  # epochs: one value, not swept (jobs.json records swept keys)


def test_a_job_in_two_arms_is_refused_naming_both():
    with pytest.raises(ConfigError, match=r"two arms of hydra.sweeper.arm_params, \+variant/x=a and seed=42"):
        jobs([], arm_params={"+variant/x": {"a": {"epochs": "2"}}, "seed": {"42": {"epochs": "3"}}})


def test_exercise_8_gives_its_widely_spread_arm_20_seeds_and_the_others_3():
    seeds = {}
    for job in experiment_jobs("cifar10_mlp", []):
        seeds.setdefault(job["+variant/cifar10_mlp"], []).append(int(job["seed"]))
    assert seeds.pop("alpha_dropout") == list(range(42, 62))
    assert seeds == {arm: [42, 43, 44] for arm in ("swish", "batch_norm", "selu", "one_cycle")}
    assert len(experiment_jobs("cifar10_mlp", ["seed=42"])) == 5


@pytest.mark.slow
def test_a_real_sweep_widens_one_arm_and_records_every_job(fashion_npz, store, tmp_path, cli_env):
    sweep_dir = tmp_path / "sweep"  # seed: the config's 42, except nadam's own two
    result = cli("-m", "optimizer=adam,nadam", "hydra.sweeper.arm_params={optimizer: {nadam: {seed: '42,43'}}}",
                 *shrunk(fashion_npz, store, tmp_path, train_size=300), "epochs=1", f"hydra.sweep.dir={sweep_dir}",
                 env=cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((sweep_dir / "jobs.json").read_text())["jobs"]
    assert [job["params"] for job in recorded] == [{"optimizer": "adam"}, {"optimizer": "nadam", "seed": "42"},
                                                   {"optimizer": "nadam", "seed": "43"}]
    parents, children = parent_and_children(store)
    assert len(parents) == 1 and len(children) == 3
    assert sorted((run.data.params["optimizer.name"], run.data.params["seed"]) for run in children) == [
        ("adam", "42"), ("nadam", "42"), ("nadam", "43")]
    assert {job["run_id"] for job in recorded} == {run.info.run_id for run in children}
