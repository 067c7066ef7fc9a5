"""Training curves from ``metrics.jsonl``: ``textrnn plot``, ``compare --plot`` and ``forecast compare --plot``.

Language-model runs get four panels: training and validation perplexity against tokens seen
and against wall time (``elapsed_sec``), and validation bits per character against both.
Forecasting runs get validation sMAPE against the step and against wall time. Several runs
are overlaid, one colour each, labelled with their directory names.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from textrnn.atomic import atomic_write
from textrnn.errors import TextrnnError


def require_matplotlib():
    """``matplotlib.pyplot`` on the file-only Agg backend, or a clear error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise TextrnnError("--plot needs matplotlib: pip install 'textrnn[plot]' (or pip install matplotlib)") from None
    return pyplot


def plot_panels(path: str | Path, panels: list[dict], title: str) -> None:
    """One panel per series: each dict has ``name`` and lines ``[(label, times, values), ...]``."""
    pyplot = require_matplotlib()
    figure, axes = pyplot.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), squeeze=False)
    for axis, panel in zip(axes[:, 0], panels):
        for label, times, lower, upper in panel.get("bands", ()):  # prediction intervals, under the lines
            axis.fill_between(times.astype("datetime64[s]").astype(object), lower, upper, alpha=0.25, label=label)
        for label, times, values in panel["lines"]:
            axis.plot(times.astype("datetime64[s]").astype(object), values, label=label, linewidth=1)
        axis.set_title(panel["name"])
        axis.legend(loc="upper left")
    figure.suptitle(title)
    figure.autofmt_xdate()
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=110)
    except OSError as error:
        raise TextrnnError(f"could not write the plot {path} ({error.strerror or error})") from None
    finally:
        pyplot.close(figure)


def read_metrics(run_dir: str | Path) -> tuple[str, list[dict]]:
    """``(task, records)`` of a run: task "charlm" or "forecast", records one dict per validation."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TextrnnError(f"{run_dir} is not a run directory: give directories written by `textrnn train`")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise TextrnnError(
            f"{path} is missing: a run writes it at each validation (--eval-every); give a run that has validated"
        )
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise TextrnnError(f"{path} is not UTF-8 text: it is not a textrnn metrics file") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise TextrnnError(f"{path} line {number} is not JSON: the metrics file is damaged") from None
        if not isinstance(record, dict) or "step" not in record:
            raise TextrnnError(f"{path} line {number} is not a metrics record (no step)")
        records.append(record)
    if not records:
        raise TextrnnError(
            f"{path} is empty: the run has not validated yet; plot it after its first --eval-every steps"
        )
    return _task(run_dir, records), records


def _task(run_dir: Path, records: list[dict]) -> str:
    try:
        task = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("task")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        task = None
    if task in ("charlm", "forecast"):
        return task
    return "forecast" if any("val_smape" in record for record in records) else "charlm"


def _labels(run_dirs: list[Path]) -> list[str]:
    """Directory names, with the parent's in front where two runs share a name (compare-A/gru, compare-B/gru)."""
    names = [path.resolve().name for path in run_dirs]
    return [
        f"{path.resolve().parent.name}/{name}" if names.count(name) > 1 else name for path, name in zip(run_dirs, names)
    ]


def _series(records: list[dict], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """The points where both values are present (a record may hold null for a value it could not compute)."""
    points = [
        (record[x_key], record[y_key])
        for record in records
        if isinstance(record.get(x_key), int | float) and isinstance(record.get(y_key), int | float)
    ]
    return [x for x, _ in points], [y for _, y in points]


def _small_png(figure) -> bytes:
    """The figure as a PNG with a 256-colour palette: line plots hold few colours, and the file shrinks about
    threefold (90 kB -> 30 kB) with no visible change."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    try:
        from PIL import Image  # a dependency of matplotlib
    except ImportError:
        return buffer.getvalue()
    palette = io.BytesIO()
    Image.open(buffer).convert("RGB").quantize(256).save(palette, format="png", optimize=True)
    return palette.getvalue()


# (x key, x label) of the two columns of panels.
_LM_COLUMNS = (("tokens", "tokens seen"), ("elapsed_sec", "wall time (s)"))
_FORECAST_COLUMNS = (("step", "step"), ("elapsed_sec", "wall time (s)"))


def plot_runs(run_dirs: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Draw the curves of ``run_dirs`` (all language-model runs, or all forecasting runs) into the PNG ``out``."""
    pyplot = require_matplotlib()
    from matplotlib import ticker

    run_dirs = [Path(path) for path in run_dirs]
    if not run_dirs:
        raise TextrnnError("no runs to plot: give one or more run directories")
    runs = [read_metrics(path) for path in run_dirs]
    tasks = {task for task, _ in runs}
    if len(tasks) > 1:
        raise TextrnnError("cannot overlay language-model and forecasting runs in one figure: plot them separately")
    task = tasks.pop()
    labels = _labels(run_dirs)
    colours = pyplot.get_cmap("tab10").colors
    if task == "forecast":
        figure, axes = pyplot.subplots(1, 2, figsize=(9, 3.6), squeeze=False)
        for index, ((_, records), label) in enumerate(zip(runs, labels)):
            colour = colours[index % len(colours)]
            for axis, (x_key, _) in zip(axes[0], _FORECAST_COLUMNS):
                axis.plot(*_series(records, x_key, "val_smape"), color=colour, marker=".", label=label)
        for axis, (_, x_label) in zip(axes[0], _FORECAST_COLUMNS):
            axis.set_xlabel(x_label)
            axis.set_ylabel("validation sMAPE (%)")
            axis.grid(alpha=0.3)
        axes[0, 0].legend(fontsize="small")
        default_title = "validation sMAPE"
    else:
        figure, axes = pyplot.subplots(2, 2, figsize=(9, 6), sharex="col", squeeze=False)
        for index, ((_, records), label) in enumerate(zip(runs, labels)):
            colour = colours[index % len(colours)]
            for column, (x_key, _) in enumerate(_LM_COLUMNS):
                top, bottom = axes[0, column], axes[1, column]
                top.plot(*_series(records, x_key, "train_perplexity"), color=colour, linestyle="--", linewidth=1)
                top.plot(*_series(records, x_key, "val_perplexity"), color=colour, linewidth=1.5, label=label)
                bottom.plot(*_series(records, x_key, "val_bits_per_char"), color=colour, linewidth=1.5)
        for column, (x_key, x_label) in enumerate(_LM_COLUMNS):
            axes[0, column].set_yscale("log")  # perplexity falls by orders of magnitude early on
            # Plain numbers (20, 30) rather than the default 2 x 10^1 on the log axis.
            axes[0, column].yaxis.set_major_formatter(ticker.LogFormatter())
            axes[0, column].yaxis.set_minor_formatter(
                ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
            )
            axes[0, column].set_ylabel("perplexity (log scale)")
            axes[1, column].set_ylabel("validation bits per character")
            axes[1, column].set_xlabel(x_label)
            if x_key == "tokens":
                axes[1, column].xaxis.set_major_formatter(ticker.EngFormatter(sep=""))  # 2M, not 2 with 1e6 aside
            for axis in axes[:, column]:
                axis.grid(alpha=0.3, which="both")
        # One legend: a colour per run, and what the solid and dashed lines mean.
        handles, names = axes[0, 0].get_legend_handles_labels()
        handles += [
            pyplot.Line2D([], [], color="black", linewidth=1.5),
            pyplot.Line2D([], [], color="black", linestyle="--", linewidth=1),
        ]
        names += ["validation", "training"]
        axes[0, 0].legend(handles, names, fontsize="small")
        default_title = "training curves"
    figure.suptitle(title or f"{default_title}: {', '.join(labels)}")
    figure.tight_layout()
    out = Path(out)
    try:
        atomic_write(out, _small_png(figure))
    except OSError as error:
        raise TextrnnError(f"could not write the plot {out} ({error.strerror or error})") from None
    finally:
        pyplot.close(figure)
    return out
