"""An MLflow logger that continues one run across restarts and logs every step once."""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch.loggers import MLFlowLogger


class ResumableMLFlowLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger``, continuing a run after a kill without logging a step twice.

    After a kill, the resumed process recomputes the steps since the last checkpoint bit for bit (exact resume),
    so what the killed process already logged for them is what would be logged again: ``continue_run`` finds the
    newest step in the run's history, and metrics for steps up to it are not sent a second time. Steps after it
    (including the one whose metrics a kill right after the checkpoint write kept from being sent) are logged
    as they are recomputed, so none is lost either.
    """

    logged_through: int | None = None

    def continue_run(self) -> int:
        """Mark the run RUNNING again and return the newest step already in its history (-1 if none)."""
        client, run_id = self.experiment, self.run_id
        newest = -1
        for key in client.get_run(run_id).data.metrics:
            newest = max([newest, *(m.step for m in client.get_metric_history(run_id, key))])
        client.update_run(run_id, status="RUNNING")
        self.logged_through = newest
        return newest

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.logged_through is not None and (step or 0) <= self.logged_through:
            return
        super().log_metrics(metrics, step)
