"""Human-readable views of run folders (console tables now; Markdown/HTML reports build on these)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def delta_cell(comparison: dict) -> str:
    return (f"{comparison['delta']:+.4f} [{comparison['ci_low']:+.4f}, {comparison['ci_high']:+.4f}] "
            f"P(better)={comparison['p_tuned_better']:.3f}")


def experiment_table(metrics: dict) -> Table:
    table = Table(title=f"moonlora experiment {metrics['run_id']}: {metrics['status']}")
    for column in ("manifest", "clips", "baseline WER", "tuned WER", "delta [95% CI]"):
        table.add_column(column, justify="left" if column in ("manifest", "delta [95% CI]") else "right", no_wrap=True)
    for name, before in metrics.get("baseline", {}).items():
        after = metrics.get("tuned", {}).get(name)
        comparison = metrics.get("comparisons", {}).get(name)
        table.add_row(name, str(before["clips"]), f"{before['wer']:.4f}",
                      "-" if after is None else f"{after['wer']:.4f}",
                      "-" if comparison is None else delta_cell(comparison))
    return table


def print_experiment(metrics: dict, console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 120))  # the CI column needs room
    console.print(experiment_table(metrics))
    training = metrics.get("training", {})
    if training:
        console.print(f"steps {training['steps']}, best step {training['best_step']} "
                      f"(val WER {training['best_val_wer']:.4f}), LoRA delta norm {training['lora_delta_norm']:.3f}, "
                      f"{training['skipped_updates']} skipped updates", highlight=False)
    if metrics.get("reason"):
        console.print(f"{metrics['status']}: {metrics['reason']}", highlight=False)
