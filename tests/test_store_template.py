"""A new SQLite store is a copy of a cached empty one (src/store_template.py): the same store
MLflow makes, made without its migrations, and never a reason for a store to fail."""

import contextlib
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from src import store_template
from src.tracking import connect


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ch11"


def store(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def contents(database: Path) -> tuple[list, dict]:
    """The schema (every table, index and trigger) and every row, with the creation times left out."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        schema = [(kind, name, table, clauses(sql)) for kind, name, table, sql in connection.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")]
        tables = [name for kind, name, _, _ in schema if kind == "table"]
        rows = {}
        for table in tables:
            columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]
            kept = [column for column in columns if column not in {"creation_time", "last_update_time", "start_time"}]
            rows[table] = sorted(connection.execute(f'SELECT {", ".join(kept)} FROM "{table}"').fetchall(), key=repr)
    return schema, rows


def clauses(sql: str | None) -> list[str]:
    """A CREATE statement's lines (columns, constraints) in sorted order: MLflow's migrations rebuild
    tables with their CHECK constraints in an order that varies between two stores it makes."""
    return sorted(line.strip().rstrip(",") for line in (sql or "").splitlines())


def use(uri: str) -> MlflowClient:
    """A store in use: an experiment, a run with a parameter, a metric and a tag."""
    client = MlflowClient(uri)
    experiment = client.create_experiment("probe")
    run = client.create_run(experiment, run_name="probe")
    client.log_param(run.info.run_id, "seed", "42")
    client.log_metric(run.info.run_id, "val_accuracy", 0.875, step=0, timestamp=0)
    client.set_tag(run.info.run_id, "ch11.probe", "yes")
    client.set_terminated(run.info.run_id)
    return client


def test_a_new_store_is_the_store_mlflow_makes_and_takes_runs(tmp_path, cache):
    """Schema, revision, workspace and Default experiment as MLflow makes them (the Default
    experiment's artifact folder is this process's, not that of the process that made the template)."""
    made_by_mlflow, copied = tmp_path / "mlflow_made", tmp_path / "copied"
    made_by_mlflow.mkdir()
    MlflowClient(store(made_by_mlflow)).search_experiments()
    connect({"uri": store(copied)})
    assert list(cache.glob("mlflow-*.db")), "the empty store was not kept for the next new store"

    native, ours = contents(made_by_mlflow / "mlflow.db"), contents(copied / "mlflow.db")
    assert ours[0] == native[0]  # the same tables, indexes and triggers
    assert ours[1] == native[1]  # the same rows: revision, workspace, Default experiment (made by MLflow in both)

    client = use(store(copied))
    (run,) = client.search_runs([client.get_experiment_by_name("probe").experiment_id])
    assert run.data.params == {"seed": "42"} and run.data.metrics == {"val_accuracy": 0.875}
    assert run.data.tags["ch11.probe"] == "yes" and run.info.status == "FINISHED"


def test_the_template_is_made_once_and_an_existing_store_is_left_alone(tmp_path, cache, caplog):
    connect({"uri": store(tmp_path / "first")})
    (template,) = cache.glob("mlflow-*.db")
    made_at = template.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="mlflow"):
        connect({"uri": store(tmp_path / "second")})
    assert template.stat().st_mtime_ns == made_at
    assert not [record for record in caplog.records if "database tables" in record.getMessage()]  # no migration

    use(store(tmp_path / "second"))
    before = contents(tmp_path / "second" / "mlflow.db")
    connect({"uri": store(tmp_path / "second")})  # an existing store is opened, never replaced by the template
    assert contents(tmp_path / "second" / "mlflow.db") == before


def test_a_damaged_template_is_made_again(tmp_path, cache):
    connect({"uri": store(tmp_path / "first")})
    (template,) = cache.glob("mlflow-*.db")
    template.write_bytes(template.read_bytes()[:4096])  # cut short, as by a full disk
    connect({"uri": store(tmp_path / "second")})
    assert store_template.at_revision(template, template.stem.rsplit("-", 1)[1])
    use(store(tmp_path / "second"))


def test_without_a_usable_cache_mlflow_makes_the_store(tmp_path, monkeypatch):
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    connect({"uri": store(tmp_path / "store")})
    use(store(tmp_path / "store"))
    assert not list(tmp_path.glob("store/.mlflow.db.*.partial"))
