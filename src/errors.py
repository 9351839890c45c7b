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


class TrainingError(LabError):
    """Training itself went wrong (a NaN loss): the config needs changing, not the code."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's text on one line (libraries' messages often span several), at most limit chars."""
    return " ".join(str(error).split())[:limit]
