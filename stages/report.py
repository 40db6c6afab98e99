"""Write reports/report.md and its figures from what the other stages recorded.

    dvc repro report
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from chatforge import stage


def main(
    reports_dir: Annotated[Path, typer.Argument(help="Folder with the stages' metrics JSON.")],
    details_path: Annotated[Path, typer.Argument(help="evaluate's details JSON (answers, confusion).")],
    balance_csv: Annotated[Path, typer.Argument(help="balance's before/after plot data.")],
    curves_dir: Annotated[Path, typer.Argument(help="dvclive folder of the train stage.")],
    lock_path: Annotated[Path, typer.Argument(help="dvc.lock, for the hashes of data and params.")],
    report_path: Annotated[Path, typer.Argument(help="Markdown report to write.")],
    figures_dir: Annotated[Path, typer.Argument(help="Folder for the PNG figures.")],
    timings: stage.Timings = None,
) -> None:
    from chatforge.evaluation import report
    from chatforge.io import atomic_path, write_text

    log = stage.start("report")
    reports = report.load_reports(reports_dir)
    details = json.loads(details_path.read_text(encoding="utf-8")) if details_path.exists() else {}
    figures = {}
    with atomic_path(figures_dir) as tmp:
        tmp.mkdir(parents=True)
        if balance_csv.exists():
            report.plot_balance(balance_csv).savefig(tmp / "balance.png", dpi=110)
            figures["balance"] = "balance.png"
        curves = report.read_curves(curves_dir) if curves_dir.exists() else {}
        if curves:
            report.plot_curves(curves).savefig(tmp / "training.png", dpi=110)
            figures["curves"] = "training.png"
        if any(v in reports.get("evaluate", {}) for v in report.VARIANTS):
            report.plot_variants(reports["evaluate"]).savefig(tmp / "variants.png", dpi=110)
            figures["variants"] = "variants.png"
    rel = Path(os.path.relpath(figures_dir, report_path.parent))
    text = report.render(
        reports,
        details=details,
        figures={k: (rel / v).as_posix() for k, v in figures.items()},
        lock_path=lock_path,
        timings=report.load_timings(reports_dir / "timings"),
    )
    write_text(text, report_path)
    if timings is not None:  # the report has no metrics of its own: only its wall time
        stage.write_timings(timings)
    log.info("wrote %s (%d figures)", report_path, len(figures))


if __name__ == "__main__":
    typer.run(main)
