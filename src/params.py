"""params.yaml: the parameters of the DVC stages (one block per stage)."""

from pathlib import Path
from typing import Any

import yaml

from src.errors import ConfigError, one_line

# Relative: a stage reads the params.yaml of the folder it runs in, as DVC runs it (the
# repository root), or the one given with --params.
PARAMS_FILE = Path("params.yaml")


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml; a missing or malformed file is a ConfigError naming it."""
    try:
        params = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; run from the repository root or pass --params") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML ({one_line(error)}); fix the file") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping of stage blocks, found {type(params).__name__}")
    return params


def block(params: dict[str, Any], *keys: str, source: Path = PARAMS_FILE) -> dict[str, Any]:
    """params[k1][k2]...: the block a stage reads, or a ConfigError naming the missing key."""
    node: Any = params
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
            where = ".".join(keys[: depth + 1])
            raise ConfigError(f"{source} has no '{where}' (known here: {known}); add it or fix the name")
        node = node[key]
    return node

