"""Shared command-line behaviour: a user mistake is one line on stderr and exit code 2."""

import sys
from collections.abc import Callable

from src.errors import LabError

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130


def run_main(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Run a stage's main(argv) and exit the process with a meaningful status."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print("error: interrupted; outputs of this step were not written", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
