"""What a person looks at after a run: a picture, a page and a summary.

`write_report` draws a committed run from what its evaluation pass gathered (the metric totals and a
`linreg.pipeline.picture.Picture`: it never reads the outputs back) and writes, beside the datasets,

    <output>/reports/run_id=<id>/report.png    loss per epoch (gradient trainers), predicted against actual
                                               per target on the holdout rows, holdout MSE per region
    <output>/reports/run_id=<id>/report.html   the numbers (MSE, RMSE, R^2 per split and target) and the picture

(`reports` holds no Parquet, so no reader of the datasets trips over it.) `metric_table` and
`summary_markdown` give the rows and text of the Prefect artifacts. The scatter plots show at most
`picture.MAX_POINTS` holdout rows sampled at random, the bars the `picture.MAX_REGIONS` worst regions.
"""

from __future__ import annotations

import html
import importlib
import io
import json
import threading
from dataclasses import dataclass

import numpy as np

from linreg.inputs.schema import pred_column
from linreg.outputs import commit
from linreg.pipeline.picture import Picture

REPORTS = commit.REPORTS
MAX_TARGETS = 6        # scatter panels


@dataclass(frozen=True)
class ReportPaths:
    png: str
    html: str


def metric_table(metric_rows: list[dict]) -> list[dict]:
    """One row per split and target over all regions (region null): rows, mse, rmse, r2, and the
    optimality gap on train; target None is the row over all targets, last in its split."""
    table: dict[tuple, dict] = {}
    rows_per_split = {r["split"]: int(r["value"]) for r in metric_rows
                      if r["metric"] == "rows" and r["region"] is None}
    for r in metric_rows:
        if r["region"] is not None or r["metric"] not in ("mse", "rmse", "r2", "optimality_gap"):
            continue
        entry = table.setdefault((r["split"], r["target"]), {"split": r["split"], "target": r["target"],
                                                               "rows": rows_per_split.get(r["split"], 0)})
        entry[r["metric"]] = r["value"]
    return sorted(table.values(), key=lambda e: (e["split"] != "train", e["target"] is None, e["target"] or ""))


def target_label(target: str | None) -> str:
    """How a person sees a metric's target: its name, or 'all targets' (in italics) for the total row."""
    return "*all targets*" if target is None else target


def warm_up() -> threading.Thread:
    """Import matplotlib and load its fonts on a background thread while the run reads, joins and fits (the
    picture is drawn at the end; under Prefect this hides most of the half second behind the server's round
    trips): the started thread. Drawing works whether it has finished or not, and a failure here is raised
    by the drawing, not by this thread."""
    def load() -> None:
        try:
            for name in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
                importlib.import_module(name)
            importlib.import_module("matplotlib.font_manager").findfont("DejaVu Sans")
        except Exception:  # noqa: BLE001 (the report's own import raises it, with its traceback)
            pass

    thread = threading.Thread(target=load, name="report-warm-up", daemon=True)
    thread.start()
    return thread


def _figure(run_id: str, trainer: str, losses: list[float], table: list[dict], picture: Picture,
            targets: list[str], cv=None) -> bytes:
    # here, not at the top: importing the flow costs nothing until a picture is drawn; the figure and its Agg
    # canvas without pyplot (no display on workers, no global state), laid out by hand (a layout engine
    # costs a second more per picture)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = targets[:MAX_TARGETS]
    ncols = max(2, len(shown))
    fig = Figure(figsize=(4.2 * ncols, 8.4))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, ncols, left=0.09, right=0.97, bottom=0.07, top=0.9, wspace=0.45, hspace=0.3)
    region_mse, sample = picture.worst, picture.sample
    holdout = {e["target"]: e for e in table if e["split"] == "holdout"}
    train = {e["target"]: e for e in table if e["split"] == "train"}
    headline = ", ".join(f"{t} {holdout[t]['mse']:.4g}" for t in targets if t in holdout) or "no holdout rows"
    fig.suptitle(f"Run {run_id} ({trainer}): holdout MSE {headline}", fontsize=12, fontweight="bold", wrap=True)

    ax = fig.add_subplot(grid[0, :ncols // 2])
    if losses:
        ax.plot(np.arange(1, len(losses) + 1), losses, color="tab:blue", linewidth=1.8)
        if min(losses) > 0 and max(losses) / min(losses) > 20:  # log scale only when it spans decades
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (standardized MSE)")
        ax.set_title(f"Loss per epoch: {len(losses)} epochs, final {losses[-1]:.4g}")
        ax.grid(True, which="both", alpha=0.3)
    elif cv is not None:
        _cv_curve(ax, cv)
    else:
        ax.axis("off")
        lines = [f"{trainer}: exact least squares, no epochs", ""]
        lines += [f"train MSE {t}: {train[t]['mse']:.6g}" for t in targets if t in train]
        ax.text(0.02, 0.95, "\n".join(lines), va="top", ha="left", fontsize=11, family="monospace",
                transform=ax.transAxes)
        ax.set_title("Training")

    ax = fig.add_subplot(grid[0, ncols // 2:])
    if region_mse:
        names, values = [r for r, _ in region_mse][::-1], [v for _, v in region_mse][::-1]
        ax.barh(names, values, color="tab:orange")
        ax.set_xlabel("holdout MSE (all targets)")
        many = picture.holdout_regions > len(region_mse)
        more = f"worst {len(region_mse)} of {picture.holdout_regions} regions" if many else "per region"
        ax.set_title(f"Holdout MSE, {more}")
        ax.tick_params(axis="y", labelsize=8 if len(names) > 12 else 10)
        ax.grid(True, axis="x", alpha=0.3)
    else:
        ax.axis("off")
        ax.set_title("Holdout MSE per region: no holdout regions")

    for j, target in enumerate(shown):
        ax = fig.add_subplot(grid[1, j])
        actual, pred = sample.get(target, np.empty(0)), sample.get(pred_column(target), np.empty(0))
        if len(actual):
            few = len(actual) < 200  # a handful of regions: big points; thousands: small translucent ones
            low, high = float(min(actual.min(), pred.min())), float(max(actual.max(), pred.max()))
            ax.plot([low, high], [low, high], color="black", linewidth=1, linestyle="--", label="perfect", zorder=1)
            ax.scatter(actual, pred, s=45 if few else 8, alpha=0.9 if few else 0.5, color="tab:green",
                       edgecolors="darkgreen" if few else "none", zorder=2, label=f"{len(actual)} holdout rows")
            ax.legend(loc="upper left", fontsize=8)
            e = holdout[target]
            ax.set_title(f"{target}: holdout MSE {e['mse']:.4g}, R² {e['r2']:.3f}")
        else:
            ax.set_title(f"{target}: no holdout rows")
        ax.set_xlabel(f"actual {target}")
        ax.set_ylabel(f"predicted {target}")
        ax.grid(True, alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _cv_curve(ax, cv) -> None:
    """The cross-validated MSE (pooled over folds, mean over targets) against l2 on a symmetric-log axis (so
    that l2 = 0 shows), the chosen value marked (`linreg.models.crossval.CrossValidation`)."""
    l2s, scores = np.asarray(cv.l2s, dtype=float), np.asarray(cv.score(), dtype=float)
    order = np.argsort(l2s)
    ax.plot(l2s[order], scores[order], marker="o", color="tab:blue", linewidth=1.8)
    ax.plot([cv.chosen_l2], [scores[cv.chosen]], marker="*", markersize=16, color="tab:red", linestyle="none",
            label=f"chosen l2 = {cv.chosen_l2:g}")
    positive = l2s[l2s > 0]
    ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
    ax.set_xlabel("l2 (symmetric log scale)")
    ax.set_ylabel("cross-validated MSE (mean over targets)")
    ax.set_title(f"{cv.coef.shape[0]}-fold cross-validation by region")
    ax.legend(loc="best", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)


def _html(run_id: str, trainer: str, table: list[dict], png_name: str, region_mse: list[tuple[str, float]]) -> str:
    def num(v):
        return "" if v is None else f"{v:.6g}"

    rows = "".join(f"<tr><td>{html.escape(e['split'])}</td><td>{_html_target(e['target'])}</td><td>{e['rows']}</td>"
                   f"<td>{num(e.get('mse'))}</td><td>{num(e.get('rmse'))}</td><td>{num(e.get('r2'))}</td></tr>"
                   for e in table)
    regions = "".join(f"<tr><td>{html.escape(str(r))}</td><td>{num(v)}</td></tr>" for r, v in region_mse)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Run {html.escape(run_id)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>Run {html.escape(run_id)} ({html.escape(trainer)})</h1>"
            "<table><tr><th>split</th><th>target</th><th>rows</th><th>MSE</th><th>RMSE</th><th>R²</th></tr>"
            f"{rows}</table><p><img src='{png_name}' alt='loss, predicted vs actual, MSE per region' "
            "style='max-width:100%'></p>"
            + (f"<h2>Holdout MSE per region (worst first)</h2><table><tr><th>region</th><th>MSE</th></tr>{regions}"
               "</table>" if regions else "")
            + "</body></html>")


def _html_target(target: str | None) -> str:
    return "<em>all targets</em>" if target is None else html.escape(target)


def _put(filesystem, path: str, data: bytes) -> None:
    """Write a file whole: to a temporary name, then moved into place (atomic on local disk)."""
    temporary = f"{path}.tmp"
    with filesystem.open_output_stream(temporary) as out:
        out.write(data)
    filesystem.move(temporary, path)


def write_report(output: str, run_id: str, *, trainer: str, metrics: list[dict], picture: Picture,
                 losses: list[float] | None = None, cv=None) -> ReportPaths:
    """Draw the committed run `run_id` of `output` into reports/run_id=<id>/report.png and report.html, from
    its metric rows over all regions (`Evaluation.metrics`), its `picture`, the loss per epoch and, for a
    cross-validated run, `cv` (`linreg.models.crossval.CrossValidation`: MSE against l2)."""
    filesystem, root, is_local = commit.resolve(output)
    table = metric_table(metrics)
    targets = [e["target"] for e in table if e["split"] == "train" and e["target"] is not None]
    png = _figure(run_id, trainer, list(losses or []), table, picture, targets, cv)
    directory = f"{root}/{REPORTS}/run_id={run_id}"
    filesystem.create_dir(directory, recursive=True)
    _put(filesystem, f"{directory}/report.png", png)
    _put(filesystem, f"{directory}/report.html", _html(run_id, trainer, table, "report.png", picture.worst).encode())
    return ReportPaths(png=commit.location(output, f"{directory}/report.png", is_local),
                       html=commit.location(output, f"{directory}/report.html", is_local))


def summary_markdown(*, run_id: str, trainer: str, config: dict, fingerprint: dict, rows: dict,
                     table: list[dict], outputs_at: dict[str, str], report: ReportPaths | None) -> str:
    """The markdown artifact: configuration, input fingerprint, rows, MSE per target, where things are."""
    lines = [f"# Run {run_id} ({trainer})", ""]
    if report:
        lines += [f"**Report**: [report.html]({_link(report.html)}) · [report.png]({_link(report.png)})", ""]
    lines += ["## MSE per target", "", "| split | target | rows | MSE | RMSE | R² |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {e['split']} | {target_label(e['target'])} | {e['rows']} | {e.get('mse', float('nan')):.6g} | "
              f"{e.get('rmse', float('nan')):.6g} | {e.get('r2', float('nan')):.4f} |" for e in table]
    lines += ["", "## Rows", ""] + [f"- {name}: {value}" for name, value in rows.items()]
    lines += ["", "## Outputs", ""] + [f"- {name}: `{path}`" for name, path in outputs_at.items()]
    lines += ["", f"## Input fingerprint `{fingerprint.get('sha256', '')}`", ""]
    for entry in fingerprint.get("tables", []):
        size = sum(f.get("size") or 0 for f in entry.get("files", []))
        lines.append(f"- {entry['role']}: `{entry['path']}`, {len(entry.get('files', []))} file(s), {size} bytes")
    lines += ["", "## Configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def _link(path: str) -> str:
    return path if "://" in path else "file://" + path

