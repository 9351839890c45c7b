"""Scenario 8: the MLflow store's own faults (issue 24), met through the training command.

Each is one `error:` line naming the store and the fix, exit code 2, and nothing lost: the
store is left as it was (never upgraded behind the user's back), or the run's resume state is
kept and the same command finishes it once the store is back, each epoch logged once.
"""

import subprocess
import sys

import pytest
import sqlalchemy
from conftest import cli, history, runs, shrunk
from mlflow.tracking import MlflowClient
from services import postgres

from faults.jobs import start_past_epoch_1

pytestmark = pytest.mark.slow


def one_error_line(stderr: str, returncode: int) -> str:
    assert returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


def finished_once(store: str, run_id: str, epochs: int) -> None:
    """The store holds one run, run_id, FINISHED: each epoch and the test scores logged once, one
    READY model, its config and figures; no failure left on it."""
    client = MlflowClient(store)
    (run,) = runs(store)
    assert run.info.run_id == run_id and run.info.status == "FINISHED" and "ch11.failure" not in run.data.tags
    assert [step for step, _ in history(client, run_id, "loss")] == list(range(1, epochs + 1))
    assert [step for step, _ in history(client, run_id, "test_accuracy")] == [epochs]
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert [str(model.status) for model in models] == ["READY"]
    assert {"config.yaml", "figures"} <= {item.path for item in client.list_artifacts(run_id)}
    assert "figures/learning_curves.png" in {item.path for item in client.list_artifacts(run_id, "figures")}


def test_an_artifact_folder_replaced_by_a_file_mid_run_fails_the_run_in_one_line_and_the_same_command_finishes_it(
        fashion_npz, store, tmp_path, cli_env, faults):
    """The local artifact store (mlartifacts/ beside the SQLite store) replaced by a file while the job
    trains: the run ends FAILED with the reason, one line naming the folder and the fix, exit 2, the
    resume state kept; with the folder back, the same command records the run once, complete."""
    args = [*shrunk(fashion_npz, store, tmp_path, train_size=15000), f"hydra.run.dir={tmp_path / 'run'}"]
    artifacts = tmp_path / "store" / "mlartifacts"
    job = start_past_epoch_1(args, cli_env, tmp_path / "state")
    artifacts.write_text("a file where the artifact folder was\n")
    faults.inject("artifact store unwritable", "mlartifacts/ replaced by a file after epoch 1")
    _, stderr = job.communicate(timeout=300)

    line = one_error_line(stderr, job.returncode)
    assert artifacts.as_uri() in line and "writable folder again" in line and "same command" in line, line
    (run,) = runs(store)
    assert run.info.status == "FAILED" and "MLflow artifact store" in run.data.tags["ch11.failure"]
    assert list((tmp_path / "state").glob("*/epoch_0002"))  # the resume state: every epoch trained

    artifacts.unlink()
    again = cli(*args, env=cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "all 2 epochs were done before the stop" in again.stdout + again.stderr
    finished_once(store, run.info.run_id, 2)


# -- PostgreSQL stores: a real server on 127.0.0.1 that asks for a password -----------------------------

PASSWORD = "s3cret-Pw"


@pytest.fixture(scope="module")
def database_server():
    with postgres(password=PASSWORD) as uri:
        yield uri


def new_database(server: str, name: str) -> str:
    """A new, empty database on the server: its URI (with the password)."""
    engine = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server.rsplit('/', 1)[0]}/{name}"


def schema(store: str) -> tuple[str, set[str]]:
    """(alembic revision, tables) of a database store."""
    engine = sqlalchemy.create_engine(store)
    with engine.connect() as connection:
        revision = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar_one()
        tables = set(sqlalchemy.inspect(connection).get_table_names())
    engine.dispose()
    return revision, tables


def test_a_postgresql_store_of_an_older_mlflow_is_one_line_left_as_it_was_and_trains_once_upgraded(
        database_server, fashion_npz, tmp_path, cli_env, faults):
    """A store whose schema an older MLflow made (ours, downgraded 3 revisions by MLflow's own alembic
    migrations): MLflow would upgrade it silently; the job says so in one line with `mlflow db upgrade`,
    exit 2, and the schema is left as it was. Upgraded as the line says, the same command trains."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config

    store = new_database(database_server, "older")
    MlflowClient(store).search_experiments()  # this MLflow's schema, then an older one
    command.downgrade(_get_alembic_config(store), "-3")
    older = schema(store)
    faults.inject("store of an older MLflow", f"PostgreSQL schema downgraded to {older[0]}")
    args = [*shrunk(fashion_npz, store, tmp_path, train_size=300), "epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    refused = cli(*args, env=cli_env)

    line = one_error_line(refused.stderr, refused.returncode)
    shown = store.replace(PASSWORD, "***")
    assert shown in line and older[0] in line and f"`mlflow db upgrade {shown}`" in line, line
    assert PASSWORD not in refused.stdout + refused.stderr
    assert schema(store) == older  # never upgraded behind the user's back

    upgraded = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", store], capture_output=True, text=True,
                              timeout=300)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    again = cli(*args, env=cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [run.info.status for run in runs(store)] == ["FINISHED"]


def test_a_postgresql_store_that_refuses_the_login_is_one_line_without_the_password(database_server, fashion_npz,
                                                                                   tmp_path, cli_env, faults):
    """A wrong password, or a user the server does not know: one line naming the store (its password
    masked, nowhere printed) and the fix, exit 2, at once (MLflow retries a refused login for ~100 s);
    with the right password the same command trains."""
    store = new_database(database_server, "login")
    args = [*shrunk(fashion_npz, store, tmp_path, train_size=300), "epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    for name, wrong in {"wrong password": store.replace(PASSWORD, "not-the-Pw"),
                        "unknown user": store.replace("mlflow:", "intruder:")}.items():
        faults.inject("store refused the login", name)
        refused = cli(*[arg.replace(store, wrong) for arg in args], env=cli_env)
        line = one_error_line(refused.stderr, refused.returncode)
        secret = wrong.split(":")[2].split("@")[0]
        assert wrong.replace(secret, "***") in line and "refused the login" in line and "password" in line, line
        assert secret not in refused.stdout + refused.stderr, name
    assert runs(store) == []
    again = cli(*args, env=cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert PASSWORD not in again.stdout + again.stderr
    assert [run.info.status for run in runs(store)] == ["FINISHED"]
