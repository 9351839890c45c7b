"""One error type per concern. Each message is one line: the problem, then the fix.

The command-line entry points (src.cli.run_main) turn these into that line on stderr and
exit code 2; anything else is a bug and keeps its traceback.
"""


class LabError(Exception):
    """A user-facing problem: bad input, missing data, unreachable service."""


class DataError(LabError):
    """A dataset is missing, unreachable, corrupt or not what it should be."""


class ConfigError(LabError):
    """A parameter or config value is unknown, mistyped or impossible."""


class TrackingError(LabError):
    """The MLflow store or server cannot be used."""


class StorageError(LabError):
    """A disk is full or refuses a write: the fix is space, not code."""


class TrainingError(LabError):
    """Training itself went wrong (a NaN loss): the config needs changing, not the code."""


DISK_ERRNOS = (28, 122, 27, 30)  # ENOSPC, EDQUOT, EFBIG, EROFS


def storage_error(error: OSError, what: str, fix: str) -> StorageError | OSError:
    """A full or read-only disk as a StorageError naming the file and the fix; other OSErrors unchanged."""
    if error.errno not in DISK_ERRNOS:
        return error
    where = error.filename or open_file(error) or what
    return StorageError(f"cannot write {where}: {error.strerror}; {fix}")


def open_file(error: BaseException) -> str | None:
    """The file a failed write() was writing to: write errors carry no file name, its frame does."""
    traceback, name = error.__traceback__, None
    while traceback is not None:  # outermost to innermost: the last file object seen is the one written
        for value in traceback.tb_frame.f_locals.values():
            if hasattr(value, "write") and isinstance(getattr(value, "name", None), str):
                name = value.name
        traceback = traceback.tb_next
    return name


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's text on one line (libraries' messages often span several), at most limit chars."""
    return " ".join(str(error).split())[:limit]
