"""Table rows from stored results (the runner's end-to-end test covers the written files)."""

from spmbench.report import table_rows


def result(eraser, rates, alteration=None):
    return {"model": "toy-base", "targets": ["Barkley"], "eraser": eraser, "fitted_on": "toy-base",
            "rates": rates, "original_rates": {"target": 1.0, "near": 0.8}, "alteration": alteration,
            "fit_seconds": 61.2, "fit_peak_mib": None}  # fmt: skip


def test_rows_show_rates_with_the_originals_and_clean_zeros():
    untouched = {"paired_feature_distance": 0.0, "fid_judge_features": -3e-7}  # FID's rounding error
    header, rows = table_rows([result("none", {}), result("spm-rel", {"target": 0.0, "near": 0.8}, untouched)])
    assert header[4:6] == ["target ↓", "near ↑"]
    assert rows == [
        ["toy-base", "Barkley", "spm-rel", "toy-base", "0 % (100 %)", "80 % (80 %)", "0.000", "0.000", "61", "-"]
    ]
