"""Each run's CPU and memory use, as MLflow's system metrics, logged with every epoch's metrics.

MLflow's own monitor (log_system_metrics) samples on a thread every 10 s and writes its first
sample only after that interval: the chapter's jobs of a few seconds would record nothing, and
its thread would write to the store beside the training's writes. Here the same metrics
(MLflow's CPU monitor: system/cpu_utilization_percentage, system/system_memory_usage_megabytes,
system/system_memory_usage_percentage) plus the training process's own share
(system/process_cpu_percentage: 100 is one core busy; system/process_memory_rss_megabytes) go
into each epoch's log_batch, so the UI's system metrics section shows them per epoch. The CPU
figures are averages over the epoch (psutil counts since the previous sample), not instants.
"""

from collections.abc import Callable

PREFIX = "system/"


class EpochSampler:
    """sink(step, metrics) with the machine's and the process's CPU and memory use added."""

    def __init__(self, sink: Callable[[int, dict[str, float]], None]):
        import psutil  # noqa: PLC0415 (with MLflow: only when a run trains)
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor  # noqa: PLC0415

        self.sink, self.machine, self.process = sink, CPUMonitor(), psutil.Process()
        self.sample()  # the CPU counters' starting point: the first epoch's share is measured from here

    def sample(self) -> dict[str, float]:
        self.machine.collect_metrics()
        metrics = self.machine.aggregate_metrics()
        self.machine.clear_metrics()
        with self.process.oneshot():
            metrics |= {"process_cpu_percentage": round(self.process.cpu_percent(), 1),
                        "process_memory_rss_megabytes": round(self.process.memory_info().rss / 1e6, 1)}
        return {PREFIX + key: float(value) for key, value in metrics.items()}

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        """An epoch's own logs (those with its duration) get the sample; the epoch's other metrics
        (the gradient diagnostics, also sent at its end) pass as they are."""
        self.sink(step, {**metrics, **self.sample()} if "epoch_time_s" in metrics else metrics)
