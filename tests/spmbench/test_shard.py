"""One run over several processes (spmbench.shard, runner.share_generation): who does what, and runs
under `accelerate launch` on the shipped toy-base, which make the tables of one process."""

import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from filelock import FileLock
from PIL import Image

from spmbench import runner
from spmbench.apps import PromptRow
from spmbench.locks import lock_path
from spmbench.shard import Shard, device_for
from tests.spmbench.conftest import FAST_FITS


def test_the_shard_is_the_launchers_or_one_process():
    assert Shard.from_env({}) == Shard(0, 1)
    assert Shard.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Shard(3, 4)
    for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "-1", "WORLD_SIZE": "2"}):
        with pytest.raises(ValueError, match="accelerate launch") as e:
            Shard.from_env(bad)
        assert "\n" not in str(e.value)
    assert device_for("cuda", {"LOCAL_RANK": "1"}) == "cuda:1"
    assert device_for("cuda:0", {"LOCAL_RANK": "1"}) == "cuda:0"  # an explicit choice is kept
    assert device_for("cuda", {}) == "cuda" and device_for("cpu", {"LOCAL_RANK": "1"}) == "cpu"


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_every_item_is_owned_once_and_taken_own_first(world_size):
    items = list(range(11))
    owned = []
    for rank in range(world_size):
        shard = Shard(rank, world_size)
        order = shard.in_order(items)
        assert sorted(order) == items  # every process goes over everything: the others' too, if left undone
        mine = [i for i in items if shard.owns(i)]
        assert order[: len(mine)] == mine and order[len(mine) :] == sorted(set(items) - set(mine), reverse=True)
        owned += mine
    assert sorted(owned) == items  # no item owned twice, none by nobody


class _Cell(SimpleNamespace):
    def image(self, row):
        return self.images / f"{row.prompt_id}.png"


def _units(tmp_path, cells=2, rows=5, batch_size=2):
    made = []
    for c in range(cells):
        cell = _Cell(key=f"m/e{c}/x", images=tmp_path / f"cell{c}" / "images")
        rows_of_cell = [PromptRow(f"p{i}", "target", "star", "a star", i) for i in range(rows)]
        made += runner.batches(cell, rows_of_cell, batch_size)
    return made


def _stand_in(fits_made, generated, on_generate=lambda batch: None):
    """fit and generate callbacks as the runner's, writing blank images (every batch waited for or held)."""

    def fit(cell):
        fits_made.append(cell)

    def generate(todo, wait):
        put_off = []
        for batch in todo:
            with runner.holding(batch.lock, wait=wait) as held:
                if not held:
                    put_off.append(batch)
                    continue
                on_generate(batch)
                for row in batch.missing():
                    batch.cell.images.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (4, 4)).save(batch.cell.image(row))
                    generated.append((batch.cell.key, row.prompt_id))
        return put_off

    return fit, generate


def test_a_process_that_never_comes_leaves_its_share_to_the_others(tmp_path):
    """Process 0 of 2 alone (process 1 died before it started): it makes its own fits, then every
    image, its share and the dead one's, each once; the other fits are made where they are needed."""
    units = _units(tmp_path)
    fits = [[units[0].cell], [units[-1].cell]]
    fits_made, generated = [], []
    fit, generate = _stand_in(fits_made, generated)
    runner.share_generation(fits, units, Shard(0, 2), lambda cell: False, fit, generate)
    assert fits_made == [units[0].cell]  # its own fit only: the dead process's is made with its cell's images
    assert sorted(generated) == sorted({(b.cell.key, r.prompt_id) for b in units for r in b.rows})
    assert not [b for b in units if b.missing()]
    generated.clear()
    runner.share_generation(fits, units, Shard(1, 3), lambda cell: False, fit, generate)  # a relaunch: nothing left
    assert generated == []


def test_a_batch_held_by_a_process_that_dies_half_way_is_made_by_another(tmp_path):
    """Process 1 holds a batch of process 0's (it took it over) and dies after writing one of its images:
    process 0 puts the batch off, waits for it, then makes what is missing of it, and nothing else twice."""
    units = _units(tmp_path, cells=1)
    victim = units[1]
    dying = FileLock(lock_path(victim.lock))  # its own descriptor: to flock, another process
    dying.acquire()
    Image.new("RGB", (4, 4)).save(victim.cell.image(victim.rows[0]))
    order = []

    def on_generate(batch):
        order.append(batch.start)
        if batch is units[-1]:
            dying.release()  # the process dies: flock lets go with it

    generated = []
    fit, generate = _stand_in([], generated, on_generate)
    runner.share_generation([], units, Shard(0, 1), lambda cell: False, fit, generate)
    assert order == [0, 4, 2]  # the held batch last
    assert generated == [("m/e0/x", p) for p in ("p0", "p1", "p4", "p3")]  # p2 was on disk
    assert not [b for b in units if b.missing()]


def test_finished_cells_are_not_generated_again(tmp_path):
    units = _units(tmp_path)
    generated = []
    fit, generate = _stand_in([], generated)
    finished = units[0].cell
    runner.share_generation([[finished]], units, Shard(0, 2), lambda cell: cell is finished, fit, generate)
    assert {key for key, _ in generated} == {units[-1].cell.key}


# Runs on the shipped toy-base (10 sampling steps) under `accelerate launch`: 2 cells (the original and negprompt, which fits
# nothing: its fit costs 0 s and 0 MiB in every run), 12 images each in batches of 4.
RUN = ["run", "--app", "toy-object", "--models", "toy-fast", "--erasers", "none,negprompt", "--limit", "1",
       "--batch-size", "4"]  # fmt: skip
# `spmbench tune` on an application with a dev split and a grid of two UCE settings (closed form: fits in no time):
# 3 dev cells (the original, one per grid point), 6 images each (1 prompt per set x 3 seeds) in batches of 2.
TUNE = ["tune", "--app", "toy-tuned", "--models", "toy-fast", "--erasers", "none,uce", "--limit", "1",
        "--batch-size", "2"]  # fmt: skip
TUNED_APP = {
    "name": "toy-tuned", "version": 1, "world": "toy", "judge": "toy", "erase": [["star"]], "seeds": [0],
    "prompts": {"target": {"concepts": "{targets}", "templates": ["a red {} on a white background"]},
                "near": {"concepts": ["circle"], "templates": ["a red {} on a white background"]}},
    "dev": {"seeds": [1, 2, 3], "prompts": {"target": {"templates": ["a {} coloured blue, gray background"]},
            "near": {"concepts": ["square"], "templates": ["a {} coloured blue, gray background"]}}},
    "tuning": {"grids": {"uce": [{"lam": 0.5}, {"lam": 0.1}]}},
}  # fmt: skip


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """launch(out, processes, args=RUN) -> Popen: `spmbench run` (or the command `args` gives) in `processes`
    processes (1: plain `python -m spmbench`, no launcher), writing runs and reports under `out`, in its own
    session; the applications include TUNED_APP."""
    from spmbench.models import MODELS_DIR

    specs = tmp_path_factory.mktemp("specs")
    spec = yaml.safe_load((MODELS_DIR / "toy-base.yaml").read_text())
    spec |= {"name": "toy-fast", "source": str((MODELS_DIR / spec["source"]).resolve()), "eraser_settings": FAST_FITS,
             "num_inference_steps": 10}  # fmt: skip
    (specs / "toy-fast.yaml").write_text(yaml.safe_dump(spec))
    apps = tmp_path_factory.mktemp("apps")
    (apps / "toy-tuned.yaml").write_text(yaml.safe_dump(TUNED_APP))
    # One thread per process: the same float arithmetic in every run, and no oversubscribed cores.
    env = os.environ | {"SPMBENCH_MODELS": str(specs), "SPMBENCH_APPS": str(apps), "OMP_NUM_THREADS": "1",
                        "HF_HUB_OFFLINE": "1"}  # fmt: skip

    def start(out: Path, processes: int, args: list[str] = RUN) -> subprocess.Popen:
        command = [sys.executable, "-m", "spmbench"]
        if processes > 1:  # --multi_gpu is torchrun's launcher, on CPUs too (--cpu would start one process)
            command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                       str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", str(_free_port()), "-m", "spmbench"]  # fmt: skip
        command += [*args, "--out", str(out / "runs"), "--reports", str(out / "reports")]
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )

    return start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finish(process: subprocess.Popen) -> str:
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    return output


def _tables(out: Path) -> dict[str, bytes]:
    reports = out / "reports" / "toy-object"
    return {str(p.relative_to(reports)): _without_fit_costs(p) for p in sorted(reports.rglob("*")) if p.is_file()}


def _without_fit_costs(path: Path) -> bytes:
    """A report file's bytes, the CSV's fit time and memory blanked: they are measured, so two runs differ by
    a process's warm-up (negprompt's fit tokenizes its targets: 0.1 MiB in a cold process, 0.0 in a warm one).
    The Markdown and LaTeX tables round them to whole units and stay compared as they are."""
    if path.suffix != ".csv":
        return path.read_bytes()
    rows = list(csv.reader(io.StringIO(path.read_bytes().decode(), newline="")))
    measure, value = rows[0].index("measure"), rows[0].index("value")
    for row in rows[1:]:
        if row[measure] in ("fit_seconds", "fit_peak_mib"):
            row[value] = "-"
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode()


@pytest.fixture(scope="module")
def one_process(launch, tmp_path_factory):
    """The reference: the run in one process, without a launcher."""
    out = tmp_path_factory.mktemp("one")
    output = _finish(launch(out, 1))
    return out, output


def test_two_processes_write_the_tables_of_one(launch, one_process, tmp_path):
    reference, one_output = one_process
    output = _finish(launch(tmp_path, 2))
    assert "toy-object: process 1 of 2 done; process 0 writes the reports" in output
    # the work was shared: no process generated all 3 batches of the original, as the one process did
    batches = r"generate toy-fast/none/original: +0%\|[^|]*\| 0/(\d)"
    assert re.findall(batches, one_output) == ["3"]
    assert re.findall(batches, output) and "3" not in re.findall(batches, output)
    tables = _tables(tmp_path)
    assert "toy-object.md" in tables and "toy-object.csv" in tables and len(tables) >= 5  # md, csv, tex, svg, grid
    assert tables == _tables(reference)
    for image in (reference / "runs").rglob("*.png"):
        assert image.read_bytes() == (tmp_path / "runs" / image.relative_to(reference / "runs")).read_bytes()
    scored = [json.loads(line) for line in (tmp_path / "runs/toy-object/cells/toy-fast/none/original/scores.jsonl")
              .read_text().splitlines()]  # fmt: skip
    assert len(scored) == len({s["prompt_id"] for s in scored}) == 12  # nothing duplicated, nothing padded
    # each result's generation seconds are its batches', whichever process made them (here both made some)
    for path in (tmp_path / "runs").rglob("result.json"):
        timed = [json.loads(line) for line in (path.parent / "generation.jsonl").read_text().splitlines() if line]
        assert sum(t["images"] for t in timed) == json.loads(path.read_text())["rows"]
        seconds = json.loads(path.read_text())["generate_seconds"]
        assert seconds == pytest.approx(sum(t["seconds"] for t in timed), abs=0.06) and seconds > 0


def test_two_processes_tune_as_one(launch, tmp_path):
    """`spmbench tune` under `accelerate launch`: the processes share the dev cells' images, the first alone
    writes the tuning record, and it is one process's (the record holds no measured fit time or memory)."""
    one = _finish(launch(tmp_path / "one", 1, TUNE))
    output = _finish(launch(tmp_path / "two", 2, TUNE))
    assert "toy-tuned: process 1 of 2 done; process 0 writes the tuning record" in output
    assert output.count("wrote ") == 2 and output.count("chosen on dev") == 1  # tuning.md and .json, once
    batches = r"generate toy-fast/none/original: +0%\|[^|]*\| 0/(\d)"
    assert re.findall(batches, one) == ["3"]
    assert re.findall(batches, output) and "3" not in re.findall(batches, output)
    record = json.loads((tmp_path / "one/reports/toy-tuned/tuning.json").read_text())
    assert [len(points) for points in record["points"]["toy-fast"].values()] == [2]
    for name in ("tuning.json", "tuning.md"):
        assert (tmp_path / "two/reports/toy-tuned" / name).read_bytes() == (
            tmp_path / "one/reports/toy-tuned" / name
        ).read_bytes()


def _rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """The launched processes by rank (the launcher's descendants with RANK set)."""
    import psutil

    ranks = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if rank is not None and "spmbench" in child.cmdline():
            ranks[int(rank)] = child.pid
    return ranks


def test_a_launch_killed_mid_run_is_finished_by_one_process(launch, one_process, tmp_path):
    """Two processes; one is killed (SIGKILL) while both generate, the launcher ends the other; one
    process without a launcher then finishes the run: the same tables. The test holds the lock of the
    last batch until the kill, so that the run cannot have finished before it."""
    reference, _ = one_process
    last = tmp_path / "runs/toy-object/cells/toy-fast/negprompt/star/images/rows-8-12"
    held = FileLock(lock_path(last))
    last.parent.mkdir(parents=True)
    held.acquire()
    launcher = launch(tmp_path, 2)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "runs").rglob("*.png")) and time.monotonic() < deadline:
            time.sleep(0.2)
        ranks = _rank_pids(launcher)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGKILL)
        launcher.wait(timeout=120)  # the launcher (torchrun) ends the other process when one dies
        assert launcher.returncode != 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        held.release()
    images = [p for p in (tmp_path / "runs").rglob("*.png") if not p.name.startswith(".")]  # not a killed write
    assert 0 < len(images) < 24 and not list((tmp_path / "runs").rglob("result.json"))  # killed mid-run
    _finish(launch(tmp_path, 1))
    assert _tables(tmp_path) == _tables(reference)
