"""A sweep as a picture: ``python -m vrl.report <multirun dir | MLflow experiment>`` (or ``vrl report ...``).

Reads every run of a sweep, from a Hydra multirun folder (each job's CSV log, else its MLflow run) or from an
MLflow experiment (the runs of one sweep), groups the runs by configuration (the overrides that differ between
jobs, less the seed: method x variant) and writes into one folder:

- ``curves.png`` (all metrics) and ``curve_<metric>.png``: each group's mean over seeds (line), the spread
  (min..max band) and each seed (thin); training metrics smoothed over a window of steps, validation raw;
- ``index.html``: the curves, a table of final metrics (mean +- std over seeds, then each seed's value) and the
  step time; ``report.json``: the same numbers.

When the runs are in MLflow, the folder is also logged as the ``report/`` artifact of the sweep's parent run (the
row the MLflow UI nests the jobs under). matplotlib runs headless (Agg).
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vrl.stats import paired_tables

#: Plotted by default, when the runs logged them; the first four also go into the final-metric table.
METRICS = ("val/accuracy", "rollout/reward_mean", "rollout/accuracy", "train/loss", "policy/kl_ref", "train/grad_norm")
STEP_TIME = "perf/step_time_s"
#: Overrides that never make two jobs different experiments (where things go, how the run prints).
IGNORED = ("hydra", "output_dir", "logger", "console", "trainer.enable_progress_bar", "save_policy", "ckpt_path")


@dataclass
class Run:
    """One job of a sweep: its name, configuration label, seed and metric histories (metric -> [(step, value)])."""

    name: str
    overrides: list[str]
    seed: int | None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    run_id: str | None = None
    parent_id: str | None = None
    group: str = ""


# ----------------------------------------------------------------- reading runs
def read_csv_history(job: Path) -> dict[str, list[tuple[int, float]]]:
    """A job's ``logger=csv`` metrics (every ``csv/version_*``: a resumed run writes the next one; later wins)."""
    by_step: dict[str, dict[int, float]] = {}
    versions = sorted((job / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[-1]))
    for version in versions:
        for row in csv.DictReader((version / "metrics.csv").open()):
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    by_step.setdefault(key, {})[int(row["step"])] = float(value)
    return {k: sorted(v.items()) for k, v in by_step.items()}


def _tracking_uri(job: Path, cfg: dict) -> str | None:
    """The job's MLflow store; a relative SQLite path is looked up next to the folder holding ``multirun/``."""
    uri = (cfg.get("logger") or {}).get("tracking_uri")
    prefix = "sqlite:///"
    if not uri or not uri.startswith(prefix) or uri[len(prefix) :].startswith("/"):
        return uri
    for base in [*job.resolve().parents, Path.cwd()]:
        if (base / uri[len(prefix) :]).is_file():
            return prefix + str(base / uri[len(prefix) :])
    return None


def read_multirun(sweep: Path, tracking_uri: str | None = None) -> list[Run]:
    """Every job of a Hydra multirun folder, its metrics from its CSV log or its MLflow run."""
    import yaml

    runs, mlflow_jobs = [], []
    for job in sorted((p for p in sweep.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()), key=_job_order):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}
        run = Run(job.name, [str(o) for o in overrides], cfg.get("seed"))
        if (job / "csv").is_dir():
            run.history = read_csv_history(job)
        else:
            mlflow_jobs.append((run, tracking_uri or _tracking_uri(job, cfg), (cfg.get("logger") or {})))
        runs.append(run)
    for uri in {uri for _, uri, _ in mlflow_jobs if uri}:
        client = _client(uri)
        jobs = {run.name: run for run, u, _ in mlflow_jobs if u == uri}
        names = {logger.get("experiment_name", "vrl") for run, u, logger in mlflow_jobs if u == uri}
        experiments = [e for e in (client.get_experiment_by_name(n) for n in names) if e is not None]
        when = "/".join(sweep.resolve().parts[-2:])  # the sweep tag holds the sweep dir as configured
        found = client.search_runs([e.experiment_id for e in experiments], filter_string=f"tags.sweep LIKE '%{when}'")
        for found_run in sorted(found, key=lambda r: r.info.start_time):  # a reused sweep dir: the newest run wins
            run = jobs.get(found_run.data.tags.get("sweep_job", ""))
            if run is not None:
                _fill_from_mlflow(client, run, found_run)
    missing = [r.name for r in runs if not r.history]
    if missing:
        print(f"[vrl] report: no metrics found for job(s) {', '.join(missing)} (logger=none?)", file=sys.stderr)
    return [r for r in runs if r.history]


def _job_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (10**9, path.name)


def read_mlflow_experiment(experiment: str, tracking_uri: str, sweep: str | None = None) -> list[Run]:
    """The runs of one sweep in an MLflow experiment: ``sweep`` (a suffix of the sweep directory), else the newest."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"[vrl] report: no MLflow experiment {experiment!r} in {tracking_uri}")
    found = [r for r in client.search_runs([exp.experiment_id], max_results=5000) if r.data.tags.get("sweep")]
    if sweep is not None:
        found = [r for r in found if r.data.tags["sweep"].rstrip("/").endswith(sweep.rstrip("/"))]
    elif found:
        newest = max(found, key=lambda r: r.info.start_time).data.tags["sweep"]
        found = [r for r in found if r.data.tags["sweep"] == newest]
    if not found:
        raise SystemExit(
            f"[vrl] report: no sweep runs in experiment {experiment!r} (runs of --multirun carry a sweep tag)"
        )
    runs = []
    for found_run in sorted(found, key=lambda r: int(r.data.tags.get("sweep_job", 0))):
        seed = found_run.data.params.get("seed")
        run = Run(found_run.data.tags.get("sweep_job", found_run.info.run_id), [], int(seed) if seed else None)
        run.overrides = found_run.data.tags.get("overrides", "").split()
        _fill_from_mlflow(client, run, found_run)
        runs.append(run)
    return runs


def _client(uri: str):
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _fill_from_mlflow(client: Any, run: Run, found: Any) -> None:
    run.run_id, run.parent_id = found.info.run_id, found.data.tags.get("mlflow.parentRunId")
    for key in found.data.metrics:
        history = client.get_metric_history(found.info.run_id, key)
        run.history[key] = sorted({m.step: float(m.value) for m in history}.items())


# ----------------------------------------------------------------- grouping and numbers
def label_groups(runs: list[Run]) -> None:
    """Each run's group: the overrides that differ between the sweep's runs, less the seed ("all" if none)."""

    def kept(o: str) -> bool:
        key = o.lstrip("+~").split("=", 1)[0]
        return key != "seed" and not key.startswith(IGNORED)

    common = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    for run in runs:
        run.group = " ".join(o.lstrip("+") for o in run.overrides if kept(o) and o not in common) or "all"


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (the first points average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def final_value(history: list[tuple[int, float]], metric: str) -> float:
    """A run's final value: the last one for validation metrics, the mean of the last 10% of steps otherwise."""
    values = [v for _, v in history if not math.isnan(v)]
    if not values:
        return math.nan
    if metric.startswith("val/"):
        return values[-1]
    tail = values[-max(1, len(values) // 10) :]
    return sum(tail) / len(tail)


def summarise(runs: list[Run], metrics: list[str]) -> dict[str, Any]:
    """Per group: each seed's final value of every metric and the step time, and their mean and std."""
    groups: dict[str, dict[str, Any]] = {}
    for run in runs:
        g = groups.setdefault(run.group, {"runs": [], "final": {}})
        g["runs"].append({"name": run.name, "seed": run.seed})
        for metric in [*metrics, STEP_TIME]:
            value = final_value(run.history.get(metric, []), metric) if metric != STEP_TIME else _mean_step(run)
            g["final"].setdefault(metric, []).append(value)
    for g in groups.values():
        g["stats"] = {m: _mean_std(v) for m, v in g["final"].items()}
    return groups


def _mean_step(run: Run) -> float:
    values = [v for _, v in run.history.get(STEP_TIME, [])[1:]] or [v for _, v in run.history.get(STEP_TIME, [])]
    return statistics.median(values) if values else math.nan  # the first step compiles / warms caches


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


# ----------------------------------------------------------------- plots and page
def plot(runs: list[Run], metrics: list[str], out: Path, dpi: int = 100) -> list[Path]:
    """``curves.png`` with every metric and one ``curve_<metric>.png`` each; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r.group for r in runs})
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    written = []
    cols = min(2, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        _draw(ax, runs, metric, groups, colours)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    written.append(out / "curves.png")
    fig.savefig(written[-1], dpi=dpi)
    plt.close(fig)
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        _draw(ax, runs, metric, groups, colours)
        fig.tight_layout()
        written.append(out / f"curve_{metric.replace('/', '_')}.png")
        fig.savefig(written[-1], dpi=dpi)
        plt.close(fig)
    return written


def _draw(ax: Any, runs: list[Run], metric: str, groups: list[str], colours: dict) -> None:
    for group in groups:
        members = [r for r in runs if r.group == group and r.history.get(metric)]
        if not members:
            continue
        steps_sets = [dict(r.history[metric]) for r in members]
        window = 1 if metric.startswith("val/") else max(1, max(len(s) for s in steps_sets) // 25)
        curves = []
        for series in steps_sets:
            steps = sorted(series)
            curves.append(dict(zip(steps, smooth([series[s] for s in steps], window))))
            ax.plot(steps, list(curves[-1].values()), color=colours[group], alpha=0.25, linewidth=0.8)
        shared = sorted(set.intersection(*(set(c) for c in curves)))
        mean = [statistics.fmean(c[s] for c in curves) for s in shared]
        lo = [min(c[s] for c in curves) for s in shared]
        hi = [max(c[s] for c in curves) for s in shared]
        marker = "o" if metric.startswith("val/") else None
        ax.plot(shared, mean, color=colours[group], linewidth=2, marker=marker, label=f"{group} (n={len(members)})")
        ax.fill_between(shared, lo, hi, color=colours[group], alpha=0.15, linewidth=0)
    ax.set_title(metric + ("" if metric.startswith("val/") else " (smoothed)"))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def draw_arm(ax: Any, label: str, runs: list[Run], metric: str) -> None:
    """One arm's unsmoothed mean over its runs (steps all logged) and min..max band: the experiment scripts' plots."""
    curves = [dict(r.history[metric]) for r in runs if r.history.get(metric)]
    if not curves:
        return
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    ax.plot(steps, [statistics.fmean(c[s] for c in curves) for s in steps], label=f"{label} ({len(curves)} seeds)")
    lo, hi = [min(c[s] for c in curves) for s in steps], [max(c[s] for c in curves) for s in steps]
    ax.fill_between(steps, lo, hi, alpha=0.15)


def write_html(
    out: Path, title: str, groups: dict[str, Any], metrics: list[str], images: list[Path], compared: dict | None = None
) -> Path:
    """``index.html``: the overview picture, the final-metric table, the paired comparisons and the per-metric
    pictures."""
    cols = [*metrics, STEP_TIME]
    head = "".join(f"<th>{html.escape(m)}</th>" for m in cols)
    rows = []
    for name, g in sorted(groups.items()):
        cells = []
        for m in cols:
            mean, std = g["stats"][m]
            seeds = ", ".join(_fmt(v) for v in g["final"][m])
            cells.append(f"<td><b>{_fmt(mean)} &plusmn; {_fmt(std)}</b><br><small>{seeds}</small></td>")
        seeds = ", ".join(str(r["seed"]) for r in g["runs"])
        rows.append(f"<tr><td>{html.escape(name)}<br><small>seeds {seeds}</small></td>{''.join(cells)}</tr>")
    pictures = "".join(f'<img src="{p.name}" alt="{p.stem}">' for p in images[1:])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1300px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}} td:first-child{{text-align:left}}
img{{max-width:100%}} .small img{{width:32%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Mean over seeds (line), min..max over seeds (band), each seed (thin). Final value: the last validation, or the
mean of the last 10% of steps of a training metric; step time: median seconds per step. Cells: mean &plusmn; std
over seeds, then each seed's value.</p>
<img src="{images[0].name}" alt="curves"><h2>Final metrics</h2>
<table><tr><th>configuration</th>{head}</tr>{"".join(rows)}</table>{_compared_html(compared)}
<h2>Each metric</h2><div class="small">{pictures}</div></body></html>"""
    path = out / "index.html"
    path.write_text(page)
    return path


def _compared_html(compared: dict | None) -> str:
    parts = []
    for metric, res in (compared or {}).items():
        text = res.get("markdown") or res.get("error", "")
        at = f" at step {res['step']}" if "step" in res else ""
        parts.append(f"<h2>Paired by seed: {html.escape(metric)}{at}</h2><pre>{html.escape(text)}</pre>")
    return "".join(parts)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


# ----------------------------------------------------------------- entry point
def report(
    runs: list[Run], out: Path, title: str, metrics: list[str] | None = None, baseline: str | None = None
) -> dict[str, Any]:
    """Write the report of ``runs`` into ``out``; returns the summary (also ``report.json``). ``baseline``: the group
    every other group is paired against, seed by seed (``vrl.stats``; default: the first group by name)."""
    if not runs:
        raise SystemExit("[vrl] report: no runs with metrics to report")
    label_groups(runs)
    logged = {m for r in runs for m in r.history}
    metrics = [m for m in (metrics or METRICS) if m in logged]
    out.mkdir(parents=True, exist_ok=True)
    images = plot(runs, metrics, out)
    table_metrics = metrics[:4]
    groups = summarise(runs, table_metrics)
    compared = paired_tables([(r.group, r.seed, r.history) for r in runs], table_metrics[:1], baseline)
    write_html(out, title, groups, table_metrics, images, compared)
    summary = {"title": title, "metrics": table_metrics, "groups": groups, "comparisons": compared}
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def attach_to_parent(runs: list[Run], out: Path, tracking_uri: str | None) -> str | None:
    """Log the report folder to the sweep's parent MLflow run (``report/``); its id, or None without one."""
    parents = {r.parent_id for r in runs if r.parent_id}
    if len(parents) != 1 or tracking_uri is None:
        return None
    (parent,) = parents
    client = _client(tracking_uri)
    client.log_artifacts(parent, str(out), artifact_path="report")
    client.set_tag(parent, "vrl.report", str(out.resolve()))
    return parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vrl report", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a multirun folder (multirun/<date>/<time>) or an MLflow experiment name")
    parser.add_argument("--out", type=Path, help="report folder (default: <multirun folder>/report, ./report)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the jobs' own; sqlite:///mlflow.db)")
    parser.add_argument("--sweep", help="with an experiment: the sweep (end of its folder, e.g. 2026-12-05/18-10-36)")
    parser.add_argument("--metrics", help=f"comma-separated metrics to plot (default: {','.join(METRICS)})")
    parser.add_argument("--baseline", help="the group the others are paired against (default: the first by name)")
    args = parser.parse_args(argv)
    metrics = args.metrics.split(",") if args.metrics else None
    source = Path(args.source)
    if source.is_dir():
        runs = read_multirun(source, args.tracking_uri)
        out, title = args.out or source / "report", f"sweep {'/'.join(source.resolve().parts[-2:])}"
        uri = args.tracking_uri or next(
            (_tracking_uri(source / r.name, _job_cfg(source / r.name)) for r in runs if r.run_id), None
        )
    else:
        from vrl.tracking import resolve_tracking_uri

        uri = resolve_tracking_uri(args.tracking_uri or "sqlite:///mlflow.db")
        runs = read_mlflow_experiment(args.source, uri, args.sweep)
        out, title = args.out or Path("report"), f"experiment {args.source}"
    summary = report(runs, out, title, metrics, args.baseline)
    parent = attach_to_parent(runs, out, uri)
    print(f"[vrl] report: {len(runs)} runs in {len(summary['groups'])} groups -> {(out / 'index.html').resolve()}")
    if parent:
        print(f"[vrl] report: logged to the sweep's MLflow parent run {parent} (artifacts: report/)")
    return 0


def _job_cfg(job: Path) -> dict:
    import yaml

    return yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}


if __name__ == "__main__":
    sys.exit(main())
