"""What every benchmark shares: the spread of repeated timings, the machine, the config.

Each benchmark module runs alone (`python -m benchmarks.<name> --json out.json`) and
writes a JSON whose "figures" list is what `make bench` (benchmarks/report.py) puts in
reports/benchmarks.md: one row per figure, a ratio measured side by side in one run.
"""

import os
import platform
import statistics
from pathlib import Path

from src import paths
from src.paths import REPO  # noqa: F401 (the benchmarks' repository root, imported from here)

# For the commands a benchmark launches: quiet TensorFlow, and the store each command names
# (an inherited MLFLOW_TRACKING_URI or MLFLOW_RUN_ID, from `mlflow run`, would redirect its runs).
CHILD_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_TRACKING_URI": "", "MLFLOW_RUN_ID": ""}


def spread(values: list[float]) -> dict:
    """Median, min, max and count of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def figure(name: str, ratios: list[float], target: float | None, detail: str, higher_is_better: bool = True,
           unit: str = "x") -> dict:
    """One row of the report: a ratio's (unit "x") or a difference's (unit "s", seconds; "pts", accuracy
    points) spread over repeats, its target and whether it was met."""
    stats = spread(ratios)
    met = None if target is None else (stats["median"] >= target if higher_is_better else stats["median"] <= target)
    return {"name": name, **stats, "target": target, "higher_is_better": higher_is_better, "met": met,
            "detail": detail, "unit": unit}


def value(row: dict, key: str = "median") -> str:
    """A figure's value as the report writes it: x2.13 for a ratio, +0.84 s or +0.12 pts for a difference."""
    return f"{row[key]:+.2f} {row['unit']}" if row.get("unit") in ("s", "pts") else f"x{row[key]:.2f}"


def machine() -> dict:
    """The CPU, its cores and memory, and the versions that decide the timings."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    memory = next((int(line.split()[1]) // 1024 ** 2 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None) if Path("/proc/meminfo").exists() else None
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "memory_gib": memory,
            "avx512": "avx512f" in flags, "amx_bf16": "amx_bf16" in flags, "python": platform.python_version(),
            "platform": platform.platform()}


def verdict(row: dict) -> str:
    """A figure's target and whether it was met ("measured" where it has none)."""
    if row["target"] is None:
        return "measured" if row["met"] is None else ("yes" if row["met"] else "NO")
    sign = ">=" if row["higher_is_better"] else "<="
    return f"{sign} {row['target']}: {'met' if row['met'] else 'NOT met'}"


def finish(benchmark: str, json_path: Path | None, figures: list[dict], **measured) -> None:
    """Print each figure and write the benchmark's JSON (what benchmarks.report reads)."""
    for row in figures:
        print(f"{row['name']}: {value(row)} (min {row['min']:.2f}, max {row['max']:.2f}; {verdict(row)})\n"
              f"    {row['detail']}")
    write_json(json_path, {"benchmark": benchmark, **measured, "figures": figures})


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        paths.write_json(path, payload)
