"""A tracking store's own faults, each found before MLflow meets it or as it happens, and said in
one line that names the store and the fix (src/tracking.py raises them as TrackingError).

- before MLflow opens a store (store_problem): a file that is not an MLflow SQLite store (MLflow
  would write its tables into another program's database), a database server that refuses the
  login (MLflow retries for about 100 s), a schema of another MLflow version (MLflow upgrades an
  older one without asking);
- while a run is recorded: a read-only or full disk under the store (read_only, disk_full), an
  artifact store that refuses a write while the tracking store answers (artifact_writes).
Addresses are printed with their password masked (shown).
"""

import contextlib
import errno
import logging
import re
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from src.errors import TrackingError, one_line

# MLflow logs each database error it re-raises, with its traceback: the line we print says it once.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite store's address (sqlite:///<path>); None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def store_problem(uri: str) -> str | None:
    """Why the store at uri cannot be opened without harm, as the line to print; None if it can."""
    if (database := sqlite_file(uri)) and (problem := sqlite_store_problem(database)):
        return f"MLflow store {uri}: {problem}"
    if uri.partition(":")[0].partition("+")[0] in DATABASE_SERVERS and (problem := database_problem(uri)):
        return f"MLflow store {shown(uri)} {problem}"
    return None


def read_only(error: BaseException) -> bool:
    """A store refused for want of write access: a read-only mount, a file or folder not writable."""
    return (isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)) or \
        "readonly database" in str(error)


MLFLOW_TABLES = {"experiments", "runs", "metrics", "params", "tags", "alembic_version"}
MOVE_ASIDE = ("point tracking.uri / MLFLOW_TRACKING_URI at an MLflow store or a new file, or restore this one "
              "from a backup")


def sqlite_store_problem(database: Path) -> str | None:
    """Why an existing file cannot be opened as an MLflow SQLite store without harm; None if it can.

    MLflow opens any file it is given: a file that is not SQLite fails with SQLAlchemy's
    traceback, and another program's SQLite database gets MLflow's tables written into it
    before the schema check fails. So the file is read first, read-only: nothing is changed.
    """
    import sqlite3  # noqa: PLC0415

    if not database.is_file() or database.stat().st_size == 0:
        return None  # a new store: MLflow creates it
    with open(database, "rb") as file:
        if file.read(16) != b"SQLite format 3\x00":
            return f"{database} is not an SQLite database (damaged, or another kind of file); {MOVE_ASIDE}"
    try:
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            revision = db.execute("SELECT version_num FROM alembic_version").fetchone() if tables >= MLFLOW_TABLES \
                else None
    except sqlite3.DatabaseError as error:  # not a full integrity check: that reads the whole store at every start
        return f"{database} is a damaged SQLite database ({error}); {MOVE_ASIDE}"
    if tables and not tables >= MLFLOW_TABLES:
        found = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
        return (f"{database} is another program's SQLite database (tables {found}), not an MLflow store, and "
                f"is left as it is; {MOVE_ASIDE}")
    problem = schema_problem(revision[0] if revision else None, f"sqlite:///{database}")
    return f"{database} {problem}" if problem else None


PASSWORD = re.compile(r"(//[^/:@]*:)([^/@]*)@")  # the password of user:password@host in an address


def shown(uri: str) -> str:
    """A store's address as printed: a password in it (user:password@host) masked."""
    return PASSWORD.sub(r"\1***@", uri)


def schema_problem(revision: str | None, uri: str) -> str | None:
    """Why a store's schema is not this MLflow's, None if it is (or the store is new).

    MLflow upgrades an older store that lacks some of its tables when it opens it, without
    asking (the upgrade cannot be undone, and older MLflow clients of the team lose the store),
    and refuses one it only half knows with a multi-line message: both are checked first.
    """
    from alembic.script import ScriptDirectory  # noqa: PLC0415 (MLflow's own migrations)
    from alembic.util.exc import CommandError  # noqa: PLC0415
    from mlflow.store.db.utils import _get_alembic_config  # noqa: PLC0415

    migrations = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    latest = migrations.get_current_head()
    if revision in (None, latest):
        return None
    try:
        migrations.get_revision(revision)
    except CommandError:
        return (f"was written by a newer MLflow (schema {revision}, unknown to MLflow {mlflow.__version__}) and is "
                f"left as it is; install that MLflow version, or point tracking.uri / MLFLOW_TRACKING_URI at another "
                "store")
    return (f"has an older MLflow's schema ({revision}; MLflow {mlflow.__version__} needs {latest}) and is left as "
            f"it is (never upgraded silently); back it up, then upgrade it with `mlflow db upgrade {shown(uri)}`, "
            "or point tracking.uri / MLFLOW_TRACKING_URI at another store")


DATABASE_SERVERS = ("postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores besides SQLite
LOGIN_REFUSED = ("authentication failed", "role", "pg_hba.conf", "access denied")


def database_problem(uri: str) -> str | None:
    """Why a database server's store (PostgreSQL, MySQL) cannot be used as it is; None if it can.

    One connection, read-only: MLflow retries a refused one for about 100 s before it says so.
    """
    import sqlalchemy  # noqa: PLC0415
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    try:
        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as error:
        reason = one_line(getattr(error, "orig", None) or error, 200)
        if (address := PASSWORD.search(uri)) and (password := address.group(2)):
            reason = reason.replace(password, "***")
        if any(word in reason.lower() for word in LOGIN_REFUSED):
            return (f"refused the login ({reason}); set the right user and password in tracking.uri / "
                    "MLFLOW_TRACKING_URI (or in ~/.pgpass), or have the database's owner grant that user access")
        return (f"cannot be reached ({reason}); start the database server, or fix the address in tracking.uri / "
                "MLFLOW_TRACKING_URI")
    engine.dispose()
    return schema_problem(revision, uri)


def disk_full(error: BaseException) -> str | None:
    """What a store said when its disk was full (SQLite, PostgreSQL, a file), else None."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return error.strerror
    text = str(error)
    return next((said for said in ("database or disk is full", "No space left on device", "Disk quota exceeded")
                 if said in text), None)


@contextlib.contextmanager
def artifact_writes(client: MlflowClient, run_id: str):
    """An artifact store that refuses a write while the tracking store answers (its folder removed,
    replaced by a file, read-only or full; a server's folder the same) as a TrackingError naming it
    and the fix. The run is then marked FAILED, its resume state kept: the same command finishes it."""
    try:
        yield
    except (OSError, MlflowException) as error:
        if isinstance(error, MlflowException) and not artifact_upload_text(error):
            raise  # the tracking store's own failure: src/job.py says so
        run = client.get_run(run_id)
        where = client.get_experiment(run.info.experiment_id).artifact_location
        if where.startswith("mlflow-artifacts:"):
            where += f" (the folder of the tracking server {shown(client.tracking_uri)})"
            fix = "make the server's --artifacts-destination folder writable, with free space"
        elif disk_full(error):
            fix = "free space on its disk"
        else:
            fix = "make it a writable folder again (it was removed, replaced by a file or made read-only)"
        if isinstance(error, OSError):
            detail = f"{error.strerror}: {error.filename}" if error.strerror else one_line(error, 200)
        else:  # MLflow's text: the upload's whole address, then the HTTP library's retry report
            upload = re.search(r"mlflow-artifacts/artifacts/(\S+)", artifact_upload_text(error))
            detail = f"the server did not store {upload.group(1) if upload else 'an upload'}"
        raise TrackingError(f"MLflow artifact store {where} refused a write ({detail}); {fix}, then run the same "
                            f"command: it finishes run {run_id} from its saved state") from None


def artifact_upload_text(error: BaseException | None) -> str:
    """The text of a server's error about an artifact upload, "" if none: MLflow may hide it under a
    later call's (logging a model, it marks the model FAILED, which can fail too)."""
    seen, todo = set(), [error]
    while todo:  # both links: a retry report's cause hides the context MLflow's cleanup ran in
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        if "mlflow-artifacts" in str(error):
            return str(error)
        seen.add(id(error))
        todo += [error.__cause__, error.__context__]
    return ""
