"""One progress printer for every training run: the trainer's events -> lines at the start, a tqdm bar over
the run's budget, and one line per validation, all on stderr (stdout stays for results and ``--json``)."""

from __future__ import annotations

import sys

from tqdm import tqdm

from textrnn.tables import number

# The figures of log and eval events, in the order shown: key -> (label, format)
FIGURES = {
    "train_perplexity": ("train ppl", number),
    "train_loss": ("loss", lambda value: f"{value:.2e}"),
    "val_perplexity": ("val ppl", number),
    "val_bits_per_char": ("val bpc", number),
    "val_smape": ("val sMAPE", lambda value: f"{number(value)}%"),
    "val_mae": ("val MAE", lambda value: number(value, 1)),
}
RATES = {"tokens": "tok/s", "windows": "windows/s"}


def figures(info: dict, prefix: str = "") -> str:
    return "  ".join(
        f"{label} {shown(info[key])}"
        for key, (label, shown) in FIGURES.items()
        if key.startswith(prefix) and key in info
    )


class ProgressPrinter:
    """A trainer callback: ``printer(event, info)``; ``close()`` ends the bar. The start event's ``notes`` (lines
    about the data, e.g. each series' cleaning) and ``source`` (what is trained on) come from the task."""

    def __init__(self):
        self.bar = None
        self.unit = "tokens"

    def __call__(self, event: str, info: dict) -> None:
        if event == "start":
            self.start(info)
        elif event == "step" and self.bar is not None:
            target = min(1000, int(info["progress"] * 1000))
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)
        elif event == "log" and self.bar is not None:
            rate = info[f"{self.unit}_per_sec"]
            self.bar.set_postfix_str(
                f"step {info['step']:,} {figures(info, 'train_')} {rate:,.0f} {RATES.get(self.unit, self.unit)}",
                refresh=False,
            )
        elif event == "eval":
            tqdm.write(self.eval_line(info), file=sys.stderr)
        elif event == "note":
            tqdm.write(info["message"], file=sys.stderr)

    def start(self, info: dict) -> None:
        self.unit = info.get("unit", "tokens")
        resumed = f", resumed at step {info['resumed_at']:,}" if info.get("resumed_at") is not None else ""
        for line in [
            *info.get("notes", ()),
            f"training {info['parameters']:,} parameters on {info['source']} on {info['device']}{resumed}",
            f"run directory: {info['run_dir']}",
        ]:
            tqdm.write(line, file=sys.stderr)
        self.bar = tqdm(
            total=1000,
            unit="",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
            disable=None,  # no bar when stderr is not a terminal (logs, CI): the validation lines remain
            bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
        )

    def eval_line(self, info: dict) -> str:
        mark = " *" if info["improved"] else ""
        mark += "  (no gain for --patience validations: stopping)" if info["stopped_early"] else ""
        rate = info[f"{self.unit}_per_sec"]
        return (
            f"step {info['step']:>6,}  epoch {info['epoch']:>3}  {figures(info)}  "
            f"{rate:,.0f} {RATES.get(self.unit, self.unit)}  {info['elapsed_sec']:.0f} s{mark}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
