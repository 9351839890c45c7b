"""A new SQLite store starts as a copy of an empty one, instead of being migrated from nothing.

MLflow makes a new SQLite store by creating its first schema and then running every Alembic
migration since: about 1.5 s of a 2-core CPU for each new store -- a user's first run, each
test's store, each benchmark side. What it makes depends only on MLflow's schema revision, so
it is made once, the way MLflow makes it (mlflow.store.db.utils._initialize_tables), and kept
in the user's cache: `~/.cache/ch11/mlflow-<version>-<revision>.db` ($XDG_CACHE_HOME). A new
store is a copy of that file. MLflow then finds its tables at the current revision and adds
its Default experiment itself, as in a store it made (the template has none: that row names
the artifact folder of the process that makes the store, ./mlruns of its working directory).

Anything wrong on the way (no cache folder, a damaged template, a full disk) leaves the
store to MLflow, which makes it as it always has; a damaged template is made again.
"""

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ch11"


def start_from_template(database: Path) -> None:
    """Make the SQLite store `database` (which must not exist yet) a copy of the empty store.
    Called under the store's schema lock, so no other process is making it meanwhile."""
    if database.exists():
        return
    try:
        template = empty_store()
        copy_whole(template, database)
    except Exception as error:  # noqa: BLE001 (no home folder, a full disk, a failed migration: MLflow makes it)
        log.debug("no template for %s (%s); MLflow makes the store", database, error)


def empty_store() -> Path:
    """The cached empty store at MLflow's current schema revision, made (or made again) if missing or damaged."""
    import mlflow  # noqa: PLC0415 (imported by the caller already; here for its version)
    from mlflow.store.db.utils import _get_latest_schema_revision  # noqa: PLC0415

    revision = _get_latest_schema_revision()
    template = cache_folder() / f"mlflow-{mlflow.__version__}-{revision}.db"
    if template.exists() and at_revision(template, revision):
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as work:
        made = Path(work) / template.name
        migrate(made)
        if not at_revision(made, revision):
            raise sqlite3.DatabaseError(f"MLflow's migrations ended at another revision than {revision}")
        os.replace(made, template)  # whole or not at all, also with other processes making it at once
    return template


def migrate(database: Path) -> None:
    """An empty store made as MLflow makes a new one (its first schema, then every migration)."""
    import sqlalchemy  # noqa: PLC0415
    from mlflow.store.db.utils import _initialize_tables  # noqa: PLC0415

    engine = sqlalchemy.create_engine(f"sqlite:///{database}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("VACUUM")  # the migrations' freed pages: 950 KB down to a fraction


def at_revision(database: Path, revision: str) -> bool:
    """The file is an intact SQLite database at this schema revision, with no experiment in it."""
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
            intact = connection.execute("PRAGMA quick_check").fetchone() == ("ok",)
            stamped = connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(revision,)]
            empty = connection.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
    except sqlite3.Error:
        return False
    return intact and stamped and empty


def copy_whole(source: Path, target: Path) -> None:
    """target becomes a copy of source at once: no process ever sees half a store."""
    descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(descriptor)
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
