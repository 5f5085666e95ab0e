"""scripts/compare_worlds.py: which verdicts of one world's tables survive in another's."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_worlds.py"
spec = importlib.util.spec_from_file_location("compare_worlds", SCRIPT)
compare_worlds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_worlds)

COLUMNS = ["model", "fitted_on", "targets", "eraser", "measure", "value", "lo", "hi", "unit", "higher_is_better", "minus_spm",
           "differs_from_spm"]  # fmt: skip


def table(rows, model="base") -> pd.DataFrame:
    """Rows of (eraser, measure, value, lo, hi, minus_spm, differs) on one model (fitted on "base") and target."""
    return pd.DataFrame(
        [(model, "base", "Barkley", e, m, v, lo, hi, "fraction", m != "target", d, str(h))
         for e, m, v, lo, hi, d, h in rows]
        + [(model, "base", "Barkley", "esd-x", "fit_seconds", 50.0, None, None, "s", None, None, "")],
        columns=COLUMNS,
    )  # fmt: skip


def test_verdicts_follow_the_direction_of_each_set_and_whether_the_difference_holds():
    rows = [
        ("spm", "target", 0.0, 0.0, 0.05, None, ""),
        ("spm", "near", 0.95, 0.9, 1.0, None, ""),
        ("spm-noft", "target", 0.0, 0.0, 0.05, None, ""),
        ("spm-noft", "near", 0.5, 0.4, 0.6, None, ""),  # intervals apart from spm's: spm better
        ("esd-x", "target", 0.3, 0.2, 0.4, 0.3, True),  # keeps more of the target: spm better
        ("esd-x", "near", 1.0, 0.95, 1.0, 0.05, True),  # keeps more of the near set: spm worse
        ("uce", "near", 0.9, 0.8, 1.0, -0.05, False),
    ]
    counts = compare_worlds.verdicts(table(rows)).set_index(["eraser", "against", "measure"])
    assert counts.loc[("esd-x", "spm", "target"), "SPM better"] == 1
    assert counts.loc[("esd-x", "spm", "near"), "SPM worse"] == 1
    assert counts.loc[("uce", "spm", "near"), "tie"] == 1
    assert counts.loc[("spm-noft", "spm", "near"), "SPM better"] == 1
    assert counts.loc[("spm-noft", "spm", "target"), "tie"] == 1
    assert ("spm", "spm-noft", "near") not in counts.index  # each pair of variants once
    assert "fit_seconds" not in set(counts.reset_index()["measure"])
    # only the family root's first fit seed counts: a derivative's rows and later seeds' are left out
    more = [("esd-x~seed1", "target", 0.0, 0.0, 0.1, 0.0, False)]
    widened = pd.concat([table(rows), table(rows, model="pastel"), table(more)], ignore_index=True)
    assert compare_worlds.verdicts(widened).equals(compare_worlds.verdicts(table(rows)))
    no_interval = table([("spm", "near", 0.9, None, None, None, ""), ("spm-noft", "near", 0.1, None, None, None, "")])
    assert compare_worlds.verdicts(no_interval).empty  # no verdict without intervals, not a tie
    assert compare_worlds.compare(compare_worlds.verdicts(no_interval), compare_worlds.verdicts(no_interval)).empty


def test_spm_variants_get_the_interval_test_in_both_worlds_even_where_a_table_pairs_them():
    paired = table([("spm", "near", 0.95, 0.9, 1.0, None, ""), ("spm-noft", "near", 0.9, 0.85, 0.95, -0.05, True)])
    paired["minus_spm_noft"], paired["differs_from_spm_noft"] = [0.05, None, None], ["True", "", ""]
    counts = compare_worlds.verdicts(paired).set_index(["eraser", "against", "measure"])
    # the paired test separates them, the intervals overlap: world v2's tables have only the intervals, so a tie
    assert counts.loc[("spm-noft", "spm", "near")].to_dict() == {"SPM better": 0, "SPM worse": 0, "tie": 1}
    assert ("spm", "spm-noft", "near") not in counts.index
    # any SPM variant the table has (spm-hardened here) takes the same test, not the table's paired one
    hardened = table(
        [("spm", "near", 0.95, 0.9, 1.0, None, ""), ("spm-hardened", "near", 0.9, 0.85, 0.95, -0.05, True)]
    )
    counts = compare_worlds.verdicts(hardened).set_index(["eraser", "against", "measure"])
    assert counts.loc[("spm-hardened", "spm", "near")].to_dict() == {"SPM better": 0, "SPM worse": 0, "tie": 1}


def test_a_verdict_that_changes_is_named_and_one_measured_in_one_world_only_too():
    before = table([("spm", "target", 0.0, 0.0, 0.1, None, ""), ("esd-x", "target", 0.3, 0.2, 0.4, 0.3, True),
                    ("esd-x", "near", 1.0, 0.9, 1.0, 0.0, False)])  # fmt: skip
    after = table([("spm", "target", 0.0, 0.0, 0.1, None, ""), ("esd-x", "target", 0.05, 0.0, 0.15, 0.05, False),
                   ("esd-x", "far", 1.0, 0.9, 1.0, 0.0, False)])  # fmt: skip
    fates = compare_worlds.compare(compare_worlds.verdicts(before), compare_worlds.verdicts(after))
    fate = {r.measure: r.fate for r in fates.itertuples()}
    assert fate == {"target": "changes: SPM better -> tie", "near": "only before", "far": "only after"}
    text = compare_worlds.markdown("toy", "toy3", {"concept": fates})
    assert "| esd-x | spm | target | SPM better (1 better) | tie (1 tie) | changes: SPM better -> tie |" in text


def test_the_script_writes_its_report_and_refuses_when_no_world_has_tables(tmp_path, capsys):
    assert compare_worlds.main(["--reports", str(tmp_path)]) == 2
    assert "no application has tables in both worlds" in capsys.readouterr().err
    rows = [("spm", "target", 0.0, 0.0, 0.1, None, ""), ("esd-x", "target", 0.3, 0.2, 0.4, 0.3, True)]
    for world in ("toy", "toy3"):
        (tmp_path / f"{world}-concept").mkdir()
        table(rows).to_csv(tmp_path / f"{world}-concept" / f"{world}-concept.csv", index=False)
    assert compare_worlds.main(["--reports", str(tmp_path)]) == 0
    text = (tmp_path / "toy3-vs-toy.md").read_text()
    assert "Summary: 1 survives" in text and "Not compared (no table in artist (both)" in text
    assert "## Transfer" not in text  # no derivative rows in either world: nothing to compare
    derived = pd.concat([table(rows), moved("toy3", [("spm", "merge", "target", 0.0, 0.0, 0.1, 0.8, 1.0)])])
    derived.to_csv(tmp_path / "toy3-concept" / "toy3-concept.csv", index=False)
    assert compare_worlds.main(["--reports", str(tmp_path)]) == 0
    text = (tmp_path / "toy3-vs-toy.md").read_text()  # a derivative of one world only: measured there only
    assert "| spm | merge | target | - | lower (1 lower) | only after |" in text
    for world in ("toy", "toy3"):  # the root's rows and a derivative's, as a table of record has them
        both = pd.concat([table(rows), moved(world, [("spm", "pastel", "target", 0.0, 0.0, 0.1, 0.8, 1.0)])])
        both.to_csv(tmp_path / f"{world}-concept" / f"{world}-concept.csv", index=False)
    assert compare_worlds.main(["--reports", str(tmp_path)]) == 0
    text = (tmp_path / "toy3-vs-toy.md").read_text()
    assert "### concept" in text and "| spm | pastel | target | lower (1 lower) | lower (1 lower) | survives |" in text


def moved(world: str, rows) -> pd.DataFrame:
    """Rows of (eraser, model, measure, value, lo, hi, original_lo, original_hi) fitted on the world's root."""
    return pd.DataFrame(
        [(f"{world}-{m}", f"{world}-base", "Barkley", e, s, v, lo, hi, olo, ohi, "fraction")
         for e, m, s, v, lo, hi, olo, ohi in rows],
        columns=["model", "fitted_on", "targets", "eraser", "measure", "value", "lo", "hi", "original_lo",
                 "original_hi", "unit"],
    )  # fmt: skip


def test_transfer_puts_each_spm_variant_on_a_derivative_against_that_models_original():
    rows = [
        ("spm", "pastel", "target", 0.0, 0.0, 0.1, 0.8, 1.0),  # below the original's interval: erased there
        ("spm", "pastel", "near", 0.9, 0.8, 0.95, 0.9, 1.0),  # intervals overlap: kept
        ("spm", "pastel", "far", 1.0, 0.97, 1.0, 0.5, 0.9),  # above
        ("spm~seed1", "pastel", "target", 0.9, 0.8, 1.0, 0.8, 1.0),  # a later fit seed: left out
        ("esd-x", "pastel", "target", 0.0, 0.0, 0.1, 0.8, 1.0),  # a baseline: transfer is SPM's claim
        ("spm-noft", "pastel", "target", 0.0, None, None, 0.8, 1.0),  # no interval: no verdict
    ]
    root = moved("toy3", [("spm", "base", "target", 0.0, 0.0, 0.1, 0.8, 1.0)])
    root["model"] = root["fitted_on"]  # the root's own rows are the other comparison's
    counts = compare_worlds.transfer_verdicts(pd.concat([moved("toy3", rows), root]), "toy3")
    counts = counts.set_index(["eraser", "model", "measure"])
    assert counts.loc[("spm", "pastel", "target")].to_dict() == {"lower": 1, "higher": 0, "tie": 0}
    assert counts.loc[("spm", "pastel", "near"), "tie"] == 1 and counts.loc[("spm", "pastel", "far"), "higher"] == 1
    assert set(counts.index) == {("spm", "pastel", m) for m in ("target", "near", "far")}


def test_transfer_is_compared_across_worlds_by_the_derivatives_name_without_the_world():
    before = moved("toy", [("spm", "pastel", "target", 0.0, 0.0, 0.1, 0.8, 1.0),
                           ("spm", "verbose", "target", 0.0, 0.0, 0.1, 0.8, 1.0)])  # fmt: skip
    after = moved("toy3", [("spm", "pastel", "target", 0.5, 0.3, 0.7, 0.6, 0.9),
                           ("spm", "merge", "target", 0.0, 0.0, 0.1, 0.8, 1.0)])  # fmt: skip
    keys = ("eraser", "model", "measure")
    fates = compare_worlds.compare(
        compare_worlds.transfer_verdicts(before, "toy"), compare_worlds.transfer_verdicts(after, "toy3"), keys=keys
    )
    fate = {r.model: r.fate for r in fates.itertuples()}
    assert fate == {"pastel": "changes: lower -> tie", "verbose": "only before", "merge": "only after"}
    text = compare_worlds.markdown("toy", "toy3", {}, {"concept": fates})
    assert (
        "## Transfer" in text
        and "| spm | pastel | target | lower (1 lower) | tie (1 tie) | changes: lower -> tie |" in text
    )


def test_transfer_measured_in_one_world_only_is_listed_and_a_wrong_world_name_is_refused():
    after = compare_worlds.transfer_verdicts(
        moved("toy3", [("spm", "pastel", "target", 0.0, 0.0, 0.1, 0.8, 1.0)]), "toy3"
    )
    fates = compare_worlds.compare(compare_worlds.transfer_verdicts(moved("toy", []), "toy"), after, keys=("eraser", "model", "measure"))  # fmt: skip
    assert [r.fate for r in fates.itertuples()] == ["only after"]
    with pytest.raises(ValueError, match="not named 'toy-"):  # toy3-pastel would never match toy's pastel
        compare_worlds.transfer_verdicts(moved("toy3", [("spm", "pastel", "target", 0.0, 0.0, 0.1, 0.8, 1.0)]), "toy")
