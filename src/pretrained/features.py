"""The frozen base's pooled features, computed once and cached on disk.

While the base is frozen and no augmentation is on, every epoch would push the same
images through the same base: the head can train on the pooled features instead. The
cache file is keyed by everything the features depend on, so a change to any of them
computes them afresh instead of reusing stale ones:

    the images of each split (their SHA-256), the base's weights (SHA-256 of the arrays:
    ImageNet, a file or a seeded random init alike), the input size, the preprocessing
    (data.scale), the precision policy, and the Keras version.

    <cache dir>/<key>.npz    one array per split, (images, channels) float32: train and
                             valid before training, test (a file of its own) at evaluation;
                             written to a temporary file and renamed, so a kill never
                             leaves half a file
"""

import hashlib
import json
import logging
import zipfile
from pathlib import Path

import keras
import numpy as np

from src.data.files import array_digest
from src.paths import atomic_path

log = logging.getLogger(__name__)


def cache_key(data, splits: tuple[str, ...], weights: str, config: dict) -> str:
    """The cache file's name: a hash of the inputs above (data is the run's Prepared splits)."""
    identity = {
        "images": {split: array_digest(data.split(split)[0]) for split in splits},
        "weights": weights, "input_size": config["data"]["resize"], "scale": config["data"]["scale"],
        "precision": config["precision"], "keras": keras.__version__, "pooling": "global_average",
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def pooled_features(folder: Path | None, key: str, splits: tuple[str, ...],
                    compute) -> tuple[dict[str, np.ndarray], bool]:
    """({split: features}, whether they came from the cache); compute() makes them on a miss.

    folder None: no cache, always computed. An unreadable cache file is computed afresh.
    """
    path = folder / f"{key}.npz" if folder is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as saved:
                features = {split: saved[split] for split in splits}
            log.info("pooled features from the cache: %s", path)
            return features, True
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
            log.warning("feature cache %s is unreadable (%s): computing the features again", path, error)
    features = compute()
    if path is not None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npz") as partial:  # np.savez would add .npz to another name
            np.savez(partial, **features)
        log.info("pooled features cached: %s", path)
    return features, False
