"""Tables from stored results: a pure function of result.json files, never recomputing anything."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from spm.files import save_image_atomic, write_text_atomic
from spmbench.apps import ERASURE_SETS, Application
from spmbench.metrics import ALTERATION, FIT_MEMORY, FIT_SECONDS, rate_info
from spmbench.result import SCHEMA, Result, cell_key


def result_paths(run_dir: Path) -> list[Path]:
    """Every cell's stored result: cells/<model>/<eraser>/<targets>/result.json."""
    return sorted((run_dir / "cells").glob("*/*/*/result.json"))  # the layout of cell_key


def load_results(run_dir: Path) -> list[Result]:
    """The stored results; one that is torn or of another schema is a one-line error naming it."""
    results = []
    for path in result_paths(run_dir):
        result = Result.load(path)
        if result is None:
            raise ValueError(f"{path}: not a readable result of schema {SCHEMA}: rerun `spmbench run` to recompute it")
        results.append(result)
    return results


def _columns(results: list[Result]) -> list[str]:
    sets = sorted({s for r in results for s in r.rates}, key=lambda s: (s not in ERASURE_SETS, s))
    return sets


def table_rows(results: list[Result]) -> tuple[list[str], list[list[str]]]:
    """One row per (model, targets, eraser); a rate per prompt set, with the original's in brackets."""
    erased = [r for r in results if r.eraser != "none"]
    sets = _columns(erased)
    header = ["model", "erased", "eraser", "fitted on"] + [f"{s} {rate_info(s, ERASURE_SETS).arrow}" for s in sets]
    header += [ALTERATION[key].header for key in ALTERATION] + [FIT_SECONDS.header, FIT_MEMORY.header]
    rows = []
    for r in sorted(erased, key=lambda r: (r.model, len(r.targets), r.eraser)):
        cells = []
        for s in sets:
            value, original = r.rates.get(s), r.original_rates.get(s)
            cells.append("-" if value is None else f"{_percent(value)} ({_percent(original)})")
        alt = r.alteration or {}
        for key in ALTERATION:
            # + 0.0: FID of two identical sets comes out as a rounding error's -0.000
            cells += [f"{round(alt[key], 3) + 0.0:.3f}" if key in alt else "-"]
        cells += [f"{r.fit_seconds:.0f}"]
        cells += ["-" if r.fit_peak_mib is None else f"{r.fit_peak_mib:.0f}"]
        rows.append([r.model, " + ".join(r.targets), r.eraser, r.fitted_on, *cells])
    return header, rows


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.0f} %"


def caption(app: Application, results: list[Result]) -> str:
    settings = results[0].settings if results else {}
    return (
        f"{app.name} v{app.version}; judge: {app.judge}; judged-present rate per prompt set, the original model's in brackets; "
        f"↓ erasure (target prompts, lower is better), ↑ erosion sets (higher is better); alteration of the non-target images against the original's (same seeds) on judge features; "
        f"fit cost: time and peak memory above the loaded model (CUDA allocation on a GPU, resident set size on CPU), summed over the targets for erasers fitted per target (SPM); DDIM {settings.get('steps')} steps, "
        f"guidance {settings.get('guidance')}, {settings.get('resolution')} px, seeds {settings.get('seeds')}"
        + (f", limit {settings['limit']} prompts per set" if settings.get("limit") else "")
    )


def markdown(app: Application, results: list[Result]) -> str:
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


def csv_text(results: list[Result]) -> str:
    """Every measured number in long form, one row each: the rates with the original model's, then
    the alteration (paired feature distance, FID) and the fitting cost, which have no original value."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "targets", "eraser", "fitted_on", "measure", "value", "original_value"])
    for r in results:
        if r.eraser == "none":
            continue
        cell = [r.model, "+".join(r.targets), r.eraser, r.fitted_on]
        for s, v in r.rates.items():
            writer.writerow(cell + [s, f"{v:.4f}", f"{r.original_rates.get(s, float('nan')):.4f}"])
        for measure, value in (r.alteration or {}).items():
            writer.writerow(cell + [measure, f"{value:.4f}", ""])
        for measure in ("fit_seconds", "fit_peak_mib"):
            if getattr(r, measure) is not None:
                writer.writerow(cell + [measure, getattr(r, measure), ""])
    return out.getvalue()


def write_reports(app: Application, run_dir: Path, out_dir: Path) -> list[Path]:
    results = load_results(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, table = out_dir / f"{app.name}.md", out_dir / f"{app.name}.csv"
    write_text_atomic(md, markdown(app, results))
    write_text_atomic(table, csv_text(results))
    tex, plot = out_dir / f"{app.name}.tex", out_dir / f"{app.name}_tradeoff.svg"
    write_text_atomic(tex, latex(app, results))
    write_text_atomic(plot, tradeoff_svg(results))
    written = [md, table, tex, plot]
    erasers = sorted({r.eraser for r in results if r.eraser != "none"})
    for r in results:
        if not erasers or r.eraser != erasers[0]:  # one grid per (model, experiment)
            continue
        grid = image_grid(run_dir, r.model, r.targets, erasers, app, r.settings["limit"])
        if grid is not None:
            path = out_dir / "grids" / f"{r.model}_{'+'.join(t.replace(' ', '-') for t in r.targets)}.png"
            path.parent.mkdir(exist_ok=True)
            save_image_atomic(grid, path)
            written.append(path)
    return written


def latex(app: Application, results: list[Result]) -> str:
    header, rows = table_rows(results)

    def esc(text: str) -> str:
        return (
            text.replace("%", r"\%")
            .replace("_", r"\_")
            .replace("&", r"\&")
            .replace("↓", r"$\downarrow$")
            .replace("↑", r"$\uparrow$")
        )

    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{" + "l" * 4 + "r" * (len(header) - 4) + "}",
        r"\toprule",
    ]
    lines.append(" & ".join(esc(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + esc(caption(app, results)) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def tradeoff_svg(results: list[Result], width: int = 480, height: int = 360) -> str:
    """Erasure (target rate relative to the original) against erosion (kept accuracy on the other sets)."""
    points = []
    for r in results:
        if r.eraser == "none" or not r.original_rates.get("target"):
            continue
        erasure = r.rates["target"] / r.original_rates["target"]
        kept = [r.rates[s] / r.original_rates[s] for s in r.rates if s not in ERASURE_SETS and r.original_rates.get(s)]
        if kept:
            points.append((erasure, sum(kept) / len(kept), f"{r.eraser} {r.model} {'+'.join(r.targets)}"))
    pad = 50
    sx = lambda v: pad + min(max(v, 0), 1.2) / 1.2 * (width - 2 * pad)  # noqa: E731
    sy = lambda v: height - pad - min(max(v, 0), 1.2) / 1.2 * (height - 2 * pad)  # noqa: E731
    palette = {"spm": "#d62728", "spm-rel": "#ff7f0e", "spm-noft": "#1f77b4"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">target presence / original (lower: more erased)</text>',
        f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle">non-target accuracy / original (higher: less eroded)</text>',
    ]
    for tick in (0, 0.5, 1.0):
        parts.append(f'<text x="{sx(tick)}" y="{height - pad + 14}" text-anchor="middle">{tick}</text>')
        parts.append(f'<text x="{pad - 6}" y="{sy(tick) + 4}" text-anchor="end">{tick}</text>')
    for x, y, label in points:
        colour = palette.get(label.split()[0], "#555")
        parts.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{colour}"><title>{label}: {x:.2f}, {y:.2f}</title></circle>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def image_grid(
    run_dir: Path,
    model: str,
    targets: list[str],
    erasers: list[str],
    app: Application,
    limit: int | None = None,
    per_set: int = 4,
    scale: int = 3,
):
    """Rows: the original then each eraser; columns: the first prompts of each set, same seeds."""
    rows = app.rows(tuple(targets), limit)
    columns = []
    for ps in app.prompt_sets:
        columns += [r for r in rows if r.set == ps.name][:per_set]
    tiles = []
    for eraser in ["none", *erasers]:
        cell = run_dir / "cells" / cell_key(model, eraser, targets) / "images"
        row = [cell / f"{r.prompt_id}.png" for r in columns]
        if all(p.exists() for p in row):
            tiles.append(row)
    return tile_grid(tiles, scale) if tiles else None


def tile_grid(rows: list[list[Path]], scale: int = 3):
    """The images at `rows` (paths, rows of equal length) side by side, enlarged `scale` times (nearest
    neighbour: the toy world's 32 px stay sharp)."""
    from PIL import Image

    tiles = [[Image.open(p).convert("RGB") for p in row] for row in rows]
    w, h = tiles[0][0].size
    canvas = Image.new("RGB", (w * len(tiles[0]), h * len(tiles)), "white")
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            canvas.paste(tile, (j * w, i * h))
    return canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
