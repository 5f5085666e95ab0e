"""Tables from stored results: a pure function of result.json files, never recomputing anything."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from spmbench.apps import ERASURE_SETS, Application


def load_results(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*/*/*/result.json"))]


def _columns(results: list[dict]) -> list[str]:
    sets = sorted({s for r in results for s in r["rates"]}, key=lambda s: (s not in ERASURE_SETS, s))
    return sets


def table_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per (model, targets, eraser); a rate per prompt set, with the original's in brackets."""
    erased = [r for r in results if r["eraser"] != "none"]
    sets = _columns(erased)
    header = ["model", "erased", "eraser", "fitted on"] + [f"{s} {'↓' if s in ERASURE_SETS else '↑'}" for s in sets]
    header += ["paired dist. ↓", "FID ↓"]
    rows = []
    for r in sorted(erased, key=lambda r: (r["model"], len(r["targets"]), r["eraser"])):
        cells = []
        for s in sets:
            value, original = r["rates"].get(s), r["original_rates"].get(s)
            cells.append("-" if value is None else f"{value * 100:.0f} % ({original * 100:.0f} %)")
        alt = r.get("alteration") or {}
        cells += [f"{alt['paired_feature_distance']:.3f}" if "paired_feature_distance" in alt else "-"]
        cells += [f"{alt['fid_judge_features']:.3f}" if "fid_judge_features" in alt else "-"]
        rows.append([r["model"], " + ".join(r["targets"]), r["eraser"], r["fitted_on"], *cells])
    return header, rows


def caption(app: Application, results: list[dict]) -> str:
    settings = results[0]["settings"] if results else {}
    return (
        f"{app.name} v{app.version}; judge: {app.judge}; judged-present rate per prompt set, the original model's in brackets; "
        f"↓ erasure (target prompts, lower is better), ↑ erosion sets (higher is better); alteration of the non-target images against the original's (same seeds) on judge features; DDIM {settings.get('steps')} steps, "
        f"guidance {settings.get('guidance')}, {settings.get('resolution')} px, seeds {settings.get('seeds')}"
        + (f", limit {settings['limit']} prompts per set" if settings.get("limit") else "")
    )


def markdown(app: Application, results: list[dict]) -> str:
    header, rows = table_rows(results)
    lines = [
        f"# {app.name}",
        "",
        caption(app, results),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(results: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "targets", "eraser", "fitted_on", "measure", "value", "original_value"])
    for r in results:
        if r["eraser"] == "none":
            continue
        for s, v in r["rates"].items():
            writer.writerow(
                [
                    r["model"],
                    "+".join(r["targets"]),
                    r["eraser"],
                    r["fitted_on"],
                    s,
                    f"{v:.4f}",
                    f"{r['original_rates'].get(s, float('nan')):.4f}",
                ]
            )
    return out.getvalue()


def write_reports(app: Application, run_dir: Path, out_dir: Path) -> list[Path]:
    results = load_results(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, table = out_dir / f"{app.name}.md", out_dir / f"{app.name}.csv"
    md.write_text(markdown(app, results))
    table.write_text(csv_text(results))
    return [md, table]
