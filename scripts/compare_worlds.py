"""Which conclusions of one toy world's tables survive in another's (issue 19: world v3 against world v2).

A conclusion is the verdict of a table's paired comparison of a baseline with an SPM variant on one prompt set, as
the tables mark it at 95 %: SPM better, SPM worse, or a tie (SPM variants against each other once per pair: a verdict
where their 95 % intervals are disjoint, in both worlds, since world v2's tables did not pair them). Each application's verdicts are
counted over its experiments on the family root in each world (the rows of its CSV, `spmbench.report.csv_text`'s columns),
and the majority verdict of each world is set side by side: it survives, changes, or is measured in one world only.
Transfer (SPM's second claim) is compared on each derivative, matched by its name without the world's prefix (both
worlds have pastel and verbose; a derivative of one world only is measured there only): each SPM variant fitted on
the root and applied unchanged, against the derivative's original on the same prompts, lower, higher or a tie by the
two 95 % intervals.

    python scripts/compare_worlds.py --before toy --after toy3      # reports/toy3-vs-toy.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


KINDS = ("concept", "artist", "explicit", "object")
VERDICTS = ("SPM better", "SPM worse", "tie")
TRANSFER_VERDICTS = ("lower", "higher", "tie")  # an SPM variant's rate on a derivative against that model's original
SPM_VARIANTS = ("spm", "spm-rel", "spm-noft")  # in this order (later against earlier), then any other 'spm*' sorted


def spm_variants(erasers) -> list[str]:
    """The table's SPM variants (names starting with 'spm', fit seeds aside), SPM_VARIANTS' first."""
    present = {e for e in erasers if e.startswith("spm") and "~" not in e}
    return [v for v in SPM_VARIANTS if v in present] + sorted(present - set(SPM_VARIANTS))


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (eraser, against, measure): how many of the table's rows give each verdict on that prompt set's
    rate, on the family roots only (where every eraser runs in both worlds, as the paper's tables of each kind) and
    for the first fit seed (later seeds' rows, `<eraser>~seed<N>`, compare with SPM's first: the table's spread is
    what they add); rows without a comparison (costs, an SPM variant against itself) are left out."""
    rates = _first_fit_rates(table[table["model"] == table["fitted_on"]])
    out, variants = [], spm_variants(rates["eraser"])
    for against in variants:
        minus, differs = f"minus_{against.replace('-', '_')}", f"differs_from_{against.replace('-', '_')}"
        if minus not in rates:
            continue
        compared = rates[~rates["eraser"].isin(variants) & rates[minus].notna()]  # variants: _variant_verdicts
        for row in compared.itertuples():
            out.append({"eraser": row.eraser, "against": against, "measure": row.measure,
                        "verdict": _verdict(getattr(row, minus), _truth(getattr(row, differs)), row.higher_is_better)})  # fmt: skip
    return _counted(out + _variant_verdicts(rates, variants), "against", VERDICTS)


def _first_fit_rates(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of prompt sets' rates from each eraser's first fit (later seeds' rows are `<eraser>~seed<N>`)."""
    return table[(table["unit"] == "fraction") & ~table["eraser"].str.contains("~seed", regex=False)]


def _counted(out: list[dict], about: str, names: tuple[str, ...]) -> pd.DataFrame:
    """One row per (eraser, `about`, measure) with how many of `out`'s verdicts are each of `names`."""
    keys = ["eraser", about, "measure"]
    frame = pd.DataFrame(out, columns=[*keys, "verdict"])
    counts = frame.groupby([*keys, "verdict"]).size().unstack("verdict", fill_value=0)
    return counts.reindex(columns=list(names), fill_value=0).reset_index()


def _variant_verdicts(rates: pd.DataFrame, variants: list[str]) -> list[dict]:
    """SPM variants against each other: a verdict where the two 95 % intervals are disjoint, a tie where they overlap
    (more conservative than the paired test the tables now mark, which world v2's tables lack: the same test in both
    worlds, so that a changed verdict is the world's, not the test's)."""
    keys = ["model", "targets", "measure"]
    spm = rates[rates["eraser"].isin(variants)]
    out = []
    pairs = [(e, a) for i, e in enumerate(variants) for a in variants[:i]]  # spm-noft against spm, ...
    for eraser, against in pairs:
        pair = spm[spm["eraser"] == eraser].merge(spm[spm["eraser"] == against], on=keys, suffixes=("", "_spm"))
        for row in pair.itertuples():
            if any(pd.isna(v) for v in (row.lo, row.hi, row.lo_spm, row.hi_spm)):
                continue  # no interval to compare: no verdict (rather than a tie)
            apart = row.lo > row.hi_spm or row.hi < row.lo_spm
            verdict = _verdict(row.value - row.value_spm, apart, row.higher_is_better)
            out.append({"eraser": eraser, "against": against, "measure": row.measure, "verdict": verdict})
    return out


def transfer_verdicts(table: pd.DataFrame, world: str) -> pd.DataFrame:
    """One row per (eraser, derivative, measure): how many of the table's rows put a root-fitted SPM variant's rate on a
    derivative below, above or level with the derivative's original (a tie where the 95 % intervals overlap: world
    v2's tables pair nothing with the original); the derivative named without the world's prefix, first fit only."""
    moved = _first_fit_rates(table[table["model"] != table["fitted_on"]])
    rates = moved[moved["eraser"].isin(spm_variants(moved["eraser"]))]
    out = []
    for row in rates.itertuples():
        bounds = (row.lo, row.hi, row.original_lo, row.original_hi)
        if any(pd.isna(v) for v in bounds):
            continue  # no interval to compare: no verdict (rather than a tie)
        verdict = "lower" if row.hi < row.original_lo else "higher" if row.lo > row.original_hi else "tie"
        if not row.model.startswith(f"{world}-"):
            raise ValueError(
                f"model {row.model!r} is not named '{world}-...': give the world its tables are named for"
            )
        model = row.model.removeprefix(f"{world}-")
        out.append({"eraser": row.eraser, "model": model, "measure": row.measure, "verdict": verdict})
    return _counted(out, "model", TRANSFER_VERDICTS)


def _truth(value) -> bool:
    return str(value).strip().lower() == "true"


def _verdict(minus_spm: float, differs: bool, higher_is_better) -> str:
    """The baseline's rate minus SPM's: where higher is better (retention) a negative holding difference is SPM's."""
    if not differs:
        return "tie"
    spm_better = minus_spm < 0 if _truth(higher_is_better) else minus_spm > 0
    return "SPM better" if spm_better else "SPM worse"


def majority(counts: pd.Series) -> str:
    top = counts.max()
    leaders = [v for v in counts.index if counts[v] == top]
    return leaders[0] if len(leaders) == 1 else "mixed"


def compare(before: pd.DataFrame, after: pd.DataFrame, keys=("eraser", "against", "measure")) -> pd.DataFrame:
    """The two worlds' verdict counts side by side, with each one's majority and what became of it; `keys` name
    what a verdict is about (the other columns are its counts: `verdicts`' or `transfer_verdicts`')."""
    keys = list(keys)
    if before.empty and after.empty:
        return pd.DataFrame(columns=[*keys, "before", "after", "fate"])
    names = [c for c in before.columns if c not in keys]
    merged = before.merge(after, on=keys, how="outer", suffixes=("_before", "_after"))
    rows = []
    for row in merged.to_dict("records"):
        sides = {}
        for side in ("before", "after"):
            counts = pd.Series({v: row[f"{v}_{side}"] for v in names})
            sides[side] = None if counts.isna().any() else (majority(counts.astype(int)), counts.astype(int))
        rows.append({**{k: row[k] for k in keys}, **_fate(sides["before"], sides["after"])})
    return pd.DataFrame(rows).sort_values(keys, ignore_index=True)


def _fate(before, after) -> dict:
    text = lambda side: "-" if side is None else f"{side[0]} ({_counts(side[1])})"  # noqa: E731
    if before is None or after is None:
        fate = "only after" if before is None else "only before"
    else:
        fate = "survives" if before[0] == after[0] else f"changes: {before[0]} -> {after[0]}"
    return {"before": text(before), "after": text(after), "fate": fate}


def _counts(counts: pd.Series) -> str:
    return ", ".join(f"{n} {v.removeprefix('SPM ')}" for v, n in counts.items() if n)


def markdown(
    before_world: str,
    after_world: str,
    tables: dict[str, pd.DataFrame],
    transfers: dict[str, pd.DataFrame] | None = None,
) -> str:
    lines = [f"# Conclusions of the {before_world} tables in the {after_world} tables", "",
             "Each line: a baseline (or SPM variant) against an SPM variant on one prompt set's rate, the verdict of the "
             "tables' paired comparison at 95 % counted over the application's experiments on the family root (better: "
             "SPM's rate is better; worse: the other eraser's; tie: the intervals cannot separate them), the majority "
             "in each world, and whether it survives.", ""]  # fmt: skip
    for kind, table in tables.items():
        lines += [f"## {kind}", "", *_section(table, "against", before_world, after_world)]
    if transfers:
        lines += ["## Transfer", "", "Each line: an SPM variant fitted on the family root and applied unchanged to a "
                  "derivative (matched across worlds by its name), its rate on one prompt set against the "
                  "derivative's original (lower or higher: the 95 % intervals are apart and the variant's is below or "
                  "above; tie: they overlap), counted over the application's experiments; a lower target rate is the transfer claim, "
                  "a tie on the other sets is retention.", ""]  # fmt: skip
        for kind, table in transfers.items():
            lines += [f"### {kind}", "", *_section(table, "model", before_world, after_world)]
    return "\n".join(lines)


def _section(table: pd.DataFrame, about: str, before_world: str, after_world: str) -> list[str]:
    """A summary of the fates and the table of verdicts; `about`: the column beside the eraser (against, model)."""
    fates = table["fate"].value_counts()
    lines = ["Summary: " + ", ".join(f"{n} {fate}" for fate, n in fates.items()), ""]
    lines += [f"| eraser | {about} | set | {before_world} | {after_world} | fate |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r.eraser} | {getattr(r, about)} | {r.measure} | {r.before} | {r.after} | {r.fate} |"
        for r in table.itertuples()
    ]
    return [*lines, ""]


def load(reports: Path, world: str, kind: str) -> pd.DataFrame | None:
    path = reports / f"{world}-{kind}" / f"{world}-{kind}.csv"
    return pd.read_csv(path, dtype={"differs_from_spm": str}) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="toy", help="the world whose conclusions are checked (its tables' prefix)")
    ap.add_argument("--after", default="toy3", help="the world they are checked in")
    ap.add_argument("--reports", type=Path, default=Path("reports"))
    ap.add_argument("--out", type=Path, help="default: REPORTS/<after>-vs-<before>.md")
    args = ap.parse_args(argv)
    tables, transfers, missing = {}, {}, []
    for kind in KINDS:
        before, after = load(args.reports, args.before, kind), load(args.reports, args.after, kind)
        if before is None or after is None:
            missing.append(
                f"{kind} ({'both' if before is None and after is None else args.after if after is None else args.before})"
            )
            continue
        tables[kind] = compare(verdicts(before), verdicts(after))
        moved = [transfer_verdicts(t, w) for t, w in ((before, args.before), (after, args.after))]
        if not (moved[0].empty and moved[1].empty):  # one world's derivatives alone are measured there only
            transfers[kind] = compare(*moved, keys=("eraser", "model", "measure"))
    if not tables:
        print(
            f"error: no application has tables in both worlds under {args.reports}: run the record first",
            file=sys.stderr,
        )
        return 2
    out = args.out or args.reports / f"{args.after}-vs-{args.before}.md"
    note = [f"Not compared (no table in {', '.join(missing)})."] if missing else []
    out.write_text(
        markdown(args.before, args.after, tables, transfers) + ("\n" + "\n".join(note) + "\n" if note else "")
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
