"""Shared command-line behaviour: a user mistake is one line on stderr and exit code 2.

Every entry point (`python -m src.train`, the data stages, the pretraining stage, the
summary writer, src.chapter) turns its errors into that line here.
"""

import argparse
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from src import interrupts
from src.errors import LabError, storage_error

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130


@contextmanager
def one_line_errors(user_errors: tuple[type[BaseException], ...] = (LabError,),
                    describe: Callable[[BaseException], str] = str,
                    interrupted: str = "interrupted; outputs of this step were not written",
                    disk_fix: str | None = None, stop_signals=(signal.SIGINT,)) -> Iterator[None]:
    """Exit with one line and a status: 2 for a user error (and, given disk_fix, a full or
    read-only disk), 130 for Ctrl-C (or another of stop_signals: src.train adds SIGTERM), which
    never stops the process inside a store call (src/interrupts.py). Anything else is a bug: its
    traceback stays."""
    try:
        with interrupts.handled(signals=stop_signals):
            yield
    except user_errors as error:
        fail(describe(error))
    except OSError as error:
        if disk_fix is None or (problem := storage_error(error, "a file", disk_fix)) is error:
            raise
        fail(str(problem))
    except KeyboardInterrupt:
        fail(interrupted, INTERRUPTED_EXIT)


def fail(message: str, status: int = USER_ERROR_EXIT) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def error_line(error: BaseException) -> str:
    """Hydra's multi-line reports as one line: lists joined with commas, search path dropped
    (src.train and src.lr_finder compose configs with Hydra)."""
    from omegaconf.errors import OmegaConfBaseException  # noqa: PLC0415 (the data stages never need it)

    lines = [line.strip() for line in str(error).split("Config search path")[0].splitlines() if line.strip()]
    text, listing = (lines[0], lines[0].endswith(":")) if lines else ("", False)
    for line in lines[1:]:
        joint = (" " if text.endswith(":") else ", ") if listing else (" " if text.endswith(".") else "; ")
        text += joint + line
        listing = listing or line.endswith(":")
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        text += f" ({str(cause).splitlines()[0]})"
    if "is not in struct" in text:
        text += "; check the spelling: `python -m src.train --help` lists every key"
    return text


def run_main(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Run a stage's main(argv) and exit the process with a meaningful status."""
    with one_line_errors():
        main(sys.argv[1:] if argv is None else argv)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with a mistake as one line, `error: <prog>: <problem>`, and exit code 2: argparse
    prints its usage block first; --help still shows it. Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}; `{self.prog} --help` lists the options")
