"""The fitting cost: peak memory measured, recorded beside the fit time, shown in the tables."""

import dataclasses
import json
import time
from contextlib import nullcontext

import pytest
import torch

from spmbench.cost import peak_memory
from spmbench.erasers.base import Eraser
from tests.spmbench.test_report import result


def test_a_200_mb_allocation_shows_and_nothing_shows_little():
    with peak_memory("cpu") as peak:
        x = torch.ones(50 * 2**20)  # 200 MiB, written so that it is resident
        time.sleep(0.2)  # several samples while it is held
        del x
    assert peak.mib >= 150
    with peak_memory("cpu") as idle:
        time.sleep(0.2)
    assert 0 <= idle.mib < 20


@pytest.mark.gpu
def test_cuda_peak():
    with peak_memory("cuda") as peak:
        x = torch.ones(50 * 2**20, device="cuda")
        del x
    assert 190 <= peak.mib < 210


class Allocating(Eraser):
    """An eraser whose fit holds 100 MiB for a moment and writes nothing."""

    name = "alloc"

    def fit(self, pipe, targets, workdir, resolution, settings=None):
        x = torch.ones(25 * 2**20)  # 100 MiB
        time.sleep(0.15)
        del x
        return []

    def apply(self, pipe, artifacts):
        return nullcontext(pipe)


def test_fit_timed_records_time_and_memory_once(tmp_path):
    from spmbench.runner import fit_timed

    eraser = Allocating()
    _, seconds, mib = fit_timed(eraser, None, ("snoopy",), tmp_path, 16, {})
    assert seconds > 0.1 and mib >= 70
    assert json.loads((tmp_path / "fit_memory.json").read_text()) == {"alloc|snoopy": mib}
    assert fit_timed(eraser, None, ("snoopy",), tmp_path, 16, {})[1:] == (seconds, mib)  # the first fit's cost
    (tmp_path / "fit_memory.json").unlink()  # a fit recorded before memory was measured
    assert fit_timed(eraser, None, ("snoopy",), tmp_path, 16, {})[1:] == (seconds, None)


def test_tables_show_fit_memory_next_to_fit_time():
    from spmbench.report import csv_text, table_rows

    base = dataclasses.replace(result("uce", {"target": 0.1}), model="m", fitted_on="m", targets=("snoopy",),
                               original_rates={"target": 0.9}, fit_seconds=12.0)  # fmt: skip
    results = [dataclasses.replace(base, fit_peak_mib=345.6), dataclasses.replace(base, eraser="old")]
    header, rows = table_rows(results)
    at = header.index("fit mem. (MiB)")
    assert header[at - 1] == "fit (s)"
    assert {row[2]: row[at] for row in rows} == {"uce": "346", "old": "-"}
    text = csv_text(results)
    assert "m,snoopy,uce,m,fit_peak_mib,345.6," in text and "m,snoopy,uce,m,fit_seconds,12.0," in text
    assert "old,m,fit_peak_mib" not in text
