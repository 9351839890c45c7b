"""Records what the fault tests inject and writes the reliability summary (a pytest plugin).

A test asks for the `faults` fixture and calls `faults.inject(kind, where)` each time it
injects a fault; its outcome is the test's own. With `--reliability-report PATH` (make
faults) the session ends by writing PATH (Markdown) and its .json twin: each scenario, the
faults injected, how often, where, and the outcome. The mutation check (tests/faults/mutate.py)
leaves its findings in reports/fault_mutations.json, which the summary shows when present.
"""

import json
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from src.paths import write_json, write_text

REPO = Path(__file__).resolve().parents[2]
MUTATIONS = REPO / "reports" / "fault_mutations.json"
SCENARIOS = {  # module -> the scenario
    "test_kill": "1-2. Training job killed (SIGKILL) or preempted (SIGTERM)",
    "test_dvc_kill": "3. `dvc repro` killed mid-stage",
    "test_disk_full": "4. Disk full while training",
    "test_corrupt": "5. Corrupt or missing inputs",
    "test_concurrency": "6. Concurrent jobs and sweeps on one store",
    "test_hostile": "7. Hostile config values on the command line",
    "test_store": "8. The MLflow store's own faults",
    "test_slurm": "9. A Slurm cluster: a drained node, a cancelled job, a preempted job",
}


@dataclass
class Record:
    test: str
    scenario: str
    injected: list[tuple[str, str]] = field(default_factory=list)  # (fault, where)
    outcome: str = "not run"
    seconds: float = 0.0


class Faults:
    """What one test injected."""

    def __init__(self, record: Record):
        self.record = record

    def inject(self, kind: str, where: str = "") -> None:
        self.record.injected.append((kind, where))


RECORDS: dict[str, Record] = {}


def pytest_addoption(parser):
    parser.addoption("--reliability-report", default=None, metavar="PATH",
                     help="write the fault suite's summary (Markdown, and a .json twin) to PATH")


@pytest.fixture
def faults(request) -> Faults:
    module = request.node.module.__name__.rsplit(".", 1)[-1]
    record = RECORDS.setdefault(request.node.nodeid, Record(request.node.name, SCENARIOS.get(module, module)))
    return Faults(record)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    record = RECORDS.get(item.nodeid)
    if record is not None and (report.when == "call" or report.failed or report.skipped):
        record.seconds += report.duration
        if report.when == "call" or record.outcome == "not run":
            record.outcome = "passed" if report.passed else "skipped" if report.skipped else "FAILED"
    return report


def pytest_sessionfinish(session):
    path = session.config.getoption("--reliability-report")
    if path and RECORDS:
        write_report(Path(path), list(RECORDS.values()))


def write_report(path: Path, records: list[Record]) -> None:
    mutations = json.loads(MUTATIONS.read_text()) if MUTATIONS.is_file() else []
    data = {"machine": f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "tests": [{"test": r.test, "scenario": r.scenario, "outcome": r.outcome, "seconds": round(r.seconds, 1),
                       "injected": dict(Counter(kind for kind, _ in r.injected)),
                       "where": [f"{kind}: {where}" for kind, where in r.injected if where]} for r in records],
            "mutations": mutations}
    lines = ["# Reliability: the fault suite", "",
             f"`make faults` on {data['machine']}, {data['date']}. Each row: one test, the faults it injected "
             "(how many times), where they landed, and the outcome. A passed row means the pipeline lost "
             "nothing: see each test's docstring in `tests/faults/` for what it checks.", ""]
    total = Counter()
    for scenario in sorted(dict.fromkeys(r["scenario"] for r in data["tests"])):  # in the order
        lines += [f"## {scenario}", "", "| test | injected | outcome | s |", "|---|---|---|---:|"]
        for row in (r for r in data["tests"] if r["scenario"] == scenario):
            injected = ", ".join(f"{kind} x{count}" for kind, count in row["injected"].items()) or "-"
            total.update(row["injected"])
            lines.append(f"| {row['test']} | {injected} | {row['outcome']} | {row['seconds']:.0f} |")
        landed = [where for row in data["tests"] if row["scenario"] == scenario for where in row["where"]]
        if landed:
            lines += ["", "Where the faults landed: " + "; ".join(landed) + "."]
        lines.append("")
    passed = sum(r["outcome"] == "passed" for r in data["tests"])
    lines += [f"**{passed} of {len(data['tests'])} tests passed; {sum(total.values())} faults injected** "
              f"({', '.join(f'{kind} x{count}' for kind, count in sorted(total.items()))}).", ""]
    if mutations:
        caught = sum(m["caught"] for m in mutations)
        lines += ["## Mutation check: each protection removed, its test must fail", "",
                  f"`make mutants` (tests/faults/mutate.py): {caught} of {len(mutations)} caught.", "",
                  "| protection removed | file | test | test failed |", "|---|---|---|---|"]
        lines += [f"| {m['protection']} | {m['file']} | {m['test']} | {'yes' if m['caught'] else 'NO'} |"
                  for m in mutations]
        lines.append("")
    write_text(path, "\n".join(lines))
    write_json(path.with_suffix(".json"), data)
