"""The mutation check: remove each protection the fault suite relies on, and see its test fail.

    python tests/faults/mutate.py            # all; writes reports/fault_mutations.json

Each mutation edits a copy of the repository (never this tree), runs the one test that
guards that protection there, and records whether the test failed, as it must. `make
faults` shows the findings in reports/reliability.md.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(HERE.parent)]  # the project and tests/conftest.py
from conftest import copy_repo  # noqa: E402

from src.paths import write_json  # noqa: E402

KILL = "tests/faults/test_kill.py::"
STORE = "tests/faults/test_store.py::"
SLURM = "tests/faults/test_slurm.py::"
MUTATIONS = [  # protection, its test, and the edits that remove it: (file, text, replacement)
    ("a resumed job loads its last saved epoch",
     KILL + "test_sigkill_at_random_points_then_the_same_command_gives_the_uninterrupted_result",
     [("src/resume.py",
      "        latest = self.latest()\n        if latest is None:\n            return self.progress()\n"
       "        model.optimizer.build", "        latest = None\n        if latest is None:\n"
       "            return self.progress()\n        model.optimizer.build")]),
    ("SIGTERM stops the job like Ctrl-C (run KILLED, state kept)",
     KILL + "test_sigterm_saves_the_state_marks_the_run_killed_and_the_next_start_resumes_it",
     [("src/train.py", "                         stop_signals=interrupts.STOP_SIGNALS,", "")]),
    ("a Ctrl-C or SIGTERM waits for the store call it interrupts",
     KILL + "test_a_stop_signalled_inside_a_store_write_stops_once_the_write_is_complete",
     [("src/interrupts.py", "        if _depth and _noted is None:", "        if False:")]),
    ("runs of killed processes are closed by the next start",
     "tests/faults/test_dvc_kill.py::"
     "test_dvc_repro_killed_mid_stage_then_rerun_completes_with_nothing_stale_lost_or_doubled",
     [("src/job.py", "    tracking.close_orphans(client, experiment_id)\n", ""),
      ("src/sweep.py", "        tracking.close_orphans(self.client, experiment_id)\n", "")]),
    ("a full disk becomes one line naming the file",
     "tests/faults/test_disk_full.py::test_a_disk_full_mid_run_is_one_line_a_failed_run_and_the_last_epoch_resumes",
     [("src/errors.py", "    if error.errno not in DISK_ERRNOS:\n        return error", "    return error")]),
    ("an unreadable prepared .npz becomes one line naming it and the fix",
     "tests/faults/test_corrupt.py::test_a_truncated_or_bit_flipped_prepared_dataset_is_refused_before_a_run_starts",
     [("src/data/load.py", "    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:",
       "    except KeyError as error:")]),
    ("a fresh SQLite store's schema is created by one process at a time",
     "tests/faults/test_concurrency.py::test_four_jobs_started_together_on_a_fresh_store_each_record_one_complete_run",
     [("src/tracking.py", "        with schema_lock(uri):", "        with contextlib.nullcontext():")]),
    ("a second process waits for a config being trained",
     "tests/faults/test_concurrency.py::test_two_sweeps_of_the_same_experiment_started_together_train_each_config_once",
     [("src/resume.py", "            fcntl.flock(self._lock, fcntl.LOCK_EX)\n",
       "            raise BlockingIOError(\"another process is training this exact config\")\n")]),
    ("a file that is no MLflow store is refused before MLflow opens (and writes into) it",
     "tests/faults/test_corrupt.py::test_a_store_that_is_no_mlflow_database_is_refused_in_one_line_and_left_as_it_was",
     [("src/store_faults.py", "    if (database := sqlite_file(uri)) and (problem := sqlite_store_problem(database)):",
       "    if False and (problem := sqlite_store_problem(database)):")]),
    ("a store on a read-only disk is one line that says to remount it",
     "tests/faults/test_disk_full.py::"
     "test_a_store_on_a_read_only_disk_is_one_line_and_the_same_command_works_once_it_is_writable",
     [("src/tracking.py", "        if read_only(error):\n", "        if False:\n")]),
    ("a store whose disk fills mid-run is one line that says to free space",
     "tests/faults/test_disk_full.py::"
     "test_a_store_whose_disk_fills_mid_run_is_one_line_and_the_same_command_finishes_the_run",
     [("src/tracking.py", "    if full := disk_full(error):", "    if full := None:")]),
    ("an artifact store that refuses a write is one line and a FAILED run",
     STORE + "test_an_artifact_folder_replaced_by_a_file_mid_run_fails_the_run_in_one_line_and_the_same_command_"
     "finishes_it",
     [("src/store_faults.py", "        yield\n    except (OSError, MlflowException) as error:",
       "        yield\n    except ZeroDivisionError as error:")]),
    ("a server's refused artifact upload is found under MLflow's later error",
     "tests/faults/test_disk_full.py::test_a_servers_artifact_folder_made_read_only_mid_run_fails_the_run_in_one_"
     "line_and_the_same_command_finishes_it",
     [("src/store_faults.py", "        if \"mlflow-artifacts\" in str(error):", "        if False:")]),
    ("a resumed run logs its test scores once",
     STORE + "test_an_artifact_folder_replaced_by_a_file_mid_run_fails_the_run_in_one_line_and_the_same_command_"
     "finishes_it",
     [("src/job.py", "{key: value for key, value in result.items() if key not in scored}", "result")]),
    ("a store of an older MLflow is refused, never upgraded silently",
     STORE + "test_a_postgresql_store_of_an_older_mlflow_is_one_line_left_as_it_was_and_trains_once_upgraded",
     [("src/store_faults.py", "    if revision in (None, latest):", "    if True:")]),
    ("a database that refuses the login is one line that says so",
     STORE + "test_a_postgresql_store_that_refuses_the_login_is_one_line_without_the_password",
     [("src/store_faults.py", "        if any(word in reason.lower() for word in LOGIN_REFUSED):",
       "        if False:")]),
    ("a store's password is masked wherever its address is printed",
     STORE + "test_a_postgresql_store_that_refuses_the_login_is_one_line_without_the_password",
     [("src/store_faults.py", "    return PASSWORD.sub(r\"\\1***@\", uri)", "    return uri")]),
    ("names used for folders refuse separators and traversal",
     "tests/faults/test_hostile.py::test_hostile_overrides_are_refused_in_one_line_and_write_nothing_outside_the_outputs",
     [("src/rules.py", "    return None if ok else (\"must be text of letters",
       "    return None if True else (\"must be text of letters")]),
    ("a preempted Slurm job requeues itself, and the requeued job finishes its run",
     SLURM + "test_a_preempted_job_marks_its_run_killed_and_the_requeued_job_finishes_it",
     [("src/train.py", "        slurm.requeue(slurm_job, hydra_config.launcher.get(\"max_num_timeout\"))\n", "")]),
    ("a Slurm job that ended without a result is one failed job of the sweep, one line",
     SLURM + "test_a_cancelled_job_fails_the_sweep_in_one_line_and_the_same_command_resumes_it_to_the_local_metrics",
     [("src/slurm.py", "    except UncompletedJobError:\n", "    except ZeroDivisionError:\n")]),
    ("Slurm job states without accounting come from squeue (else a cancelled job is waited on for ever)",
     SLURM + "test_a_cancelled_job_fails_the_sweep_in_one_line_and_the_same_command_resumes_it_to_the_local_metrics",
     [("src/slurm.py", "if keeps_accounting() else QueueWatcher(delay_s=30)", "")]),
    ("a refused sweep's workers hold TensorFlow's start-up lines back: its one error line alone",
     "tests/test_quiet.py::test_a_refusal_is_one_error_line_and_exit_2[parallel sweep: unusable store]",
     [("src/launcher.py", "    with held_back_output():\n", "    with contextlib.nullcontext():\n")]),
]


def mutate(work: Path, edits: list[tuple[str, str, str]]) -> None:
    for name, text, replacement in edits:
        path = work / name
        source = path.read_text()
        assert source.count(text) == 1, f"{name}: the text to mutate is not there once (the code moved?): {text!r}"
        path.write_text(source.replace(text, replacement))


def check(protection: str, test: str, edits: list) -> dict:
    with tempfile.TemporaryDirectory(prefix="ch11-mutant-") as folder:
        work = copy_repo(Path(folder) / "repo")
        mutate(work, edits)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "pytest", test, "-x", "-q", "-p", "no:cacheprovider"],
                                cwd=work, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True,
                                text=True, timeout=900)
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    if " skipped" in summary and " failed" not in summary and " passed" not in summary:  # judged nothing
        raise SystemExit(f"mutants: {test} was skipped ({summary}), so no mutation can be judged; give the tests "
                         "what they need first (the real data: CH11_DATA_MIRROR=<mirror> make mutants)")
    caught = result.returncode == 1 and " failed" in summary  # failed as a test, not a collection error
    print(f"{'caught' if caught else 'MISSED'}: {protection} ({summary})", flush=True)
    return {"protection": protection, "file": ", ".join(sorted({name for name, *_ in edits})), "test": test,
            "caught": caught, "result": summary, "seconds": round(time.monotonic() - started)}


def main() -> int:
    findings = [check(*mutation) for mutation in MUTATIONS]
    output = REPO / "reports" / "fault_mutations.json"
    write_json(output, findings)
    missed = [finding["protection"] for finding in findings if not finding["caught"]]
    print(f"{len(findings) - len(missed)} of {len(findings)} mutations caught -> {output.relative_to(REPO)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
