"""Numbers of the report: per-arm statistics over seeds and the verdict against a published value."""

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # sample standard deviation over seeds (0 with one seed)
    n: int

    def shown(self, digits: int = 4) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.n > 1 else f"{self.mean:.{digits}f}"


def spread(values: list[float | None]) -> Spread | None:
    kept = [value for value in values if value is not None and math.isfinite(value)]
    if not kept:
        return None
    return Spread(statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else 0.0, len(kept))


def arm_metric(runs: list[dict], metric: str) -> Spread | None:
    """A final metric over the seeds of an arm; a diverged run counts as missing (and is reported)."""
    return spread([run.get(metric) for run in runs if not run["diverged"]])


def verdict(ours: Spread, published: float, tolerance: float) -> str:
    """Within tolerance; or outside it but explained by the seed spread; or a real difference."""
    gap = ours.mean - published
    if abs(gap) <= tolerance:
        return f"within {tolerance * 100:.1f} pts"
    if ours.n > 1 and abs(gap) <= 2 * ours.std:
        return (f"outside {tolerance * 100:.1f} pts, but within the seed spread: the published single run "
                f"lies inside our mean ± 2 std ({2 * ours.std * 100:.1f} pts)")
    return f"differs by {gap * 100:+.1f} pts (more than 2 std of our seeds): see the note"


def seed_gaps(first: list[dict], second: list[dict], metric: str) -> list[float]:
    """second - first, seed by seed, over the seeds where both have the metric."""
    by_seed = {run["seed"]: run.get(metric) for run in first}
    return [run.get(metric) - by_seed[run["seed"]] for run in second
            if run["seed"] in by_seed and run.get(metric) is not None and by_seed[run["seed"]] is not None]


def paired_difference(first: list[dict], second: list[dict], metric: str) -> tuple[Spread, float, float] | None:
    """second - first over the seeds both have, the paired t statistic and its two-sided p-value."""
    from scipy.stats import t as student  # noqa: PLC0415

    gap = spread(seed_gaps(first, second, metric))
    if gap is None or gap.n < 2:
        return None
    t = gap.mean / (gap.std / math.sqrt(gap.n)) if gap.std > 0 else math.copysign(math.inf, gap.mean)
    return gap, t, float(2 * student.sf(abs(t), gap.n - 1))
