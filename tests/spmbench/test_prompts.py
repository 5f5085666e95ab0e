import os
from pathlib import Path

import pytest

from spmbench import prompts


SHARED = Path(os.environ.get("SPM_SHARED_DIR", Path(__file__).resolve().parents[2].parent / "shared"))
BENCH = SHARED / "data" / "benchmarks"


@pytest.fixture(scope="module")
def bench_dir():
    if not BENCH.is_dir():
        pytest.fail(f"the published prompt files are expected in {BENCH} (set SPM_SHARED_DIR to ../shared)")
    return BENCH


def test_pinned_sums_match_the_published_files(bench_dir):
    sums = dict(line.split()[::-1] for line in (bench_dir / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert {name: sha for name, (sha, _) in prompts.PUBLISHED.items()} == sums
    for name, (sha, _) in prompts.PUBLISHED.items():
        assert prompts.sha256(bench_dir / name) == sha, name


@pytest.mark.parametrize(
    "name, rows, first_label",
    [
        ("vangogh_prompts.csv", 20, "Van Gogh"),
        ("big_artists_prompts.csv", 100, "Pablo Picasso"),
        ("small_imagenet_prompts.csv", 100, "cassette player"),
        ("imagenet_prompts.csv", 1860, "tench"),
        ("i2p_benchmark.csv", 4703, None),
        ("nudity_benchmark.csv", 854, None),
        ("coco_30k.csv", 30000, None),
    ],
)
def test_real_files_parse(bench_dir, name, rows, first_label):
    records = prompts.read_prompts(bench_dir / name)
    assert len(records) == rows
    assert all(r.prompt and isinstance(r.seed, int) for r in records)
    if first_label:
        assert records[0].label == first_label
    if name.startswith(("i2p", "nudity")):
        assert all(r.guidance_scale and r.width and r.height for r in records)
        assert "sexual" in records[0].extra["categories"] or name == "i2p_benchmark.csv"
    if name == "coco_30k.csv":
        assert records[0].prompt_id == "203564" and records[0].seed == 41337


def test_fetch_verifies_and_caches_atomically(bench_dir, tmp_path):
    name = "vangogh_prompts.csv"
    path = prompts.fetch(name, tmp_path, url=(bench_dir / name).as_uri())
    assert path == tmp_path / name and prompts.sha256(path) == prompts.PUBLISHED[name][0]
    assert prompts.fetch(name, tmp_path, url="file:///nonexistent") == path  # cached: no download
    corrupt = tmp_path / "corrupt.csv"
    corrupt.write_text("case_number,prompt,evaluation_seed\n0,changed,1\n")
    with pytest.raises(ValueError, match="does not match the pinned"):
        prompts.fetch("picasso_prompts.csv", tmp_path, url=corrupt.as_uri())
    assert not (tmp_path / "picasso_prompts.csv").exists() and not list(tmp_path.glob("*.part"))
    with pytest.raises(ValueError, match="unknown prompt file 'nope.csv'.*published files: andy_warhol"):
        prompts.fetch("nope.csv", tmp_path)


def test_check_source_accepts_local_and_published_files_only(tmp_path):
    prompts.check_source("vangogh_prompts.csv")
    (tmp_path / "mine.csv").write_text("")
    prompts.check_source(str(tmp_path / "mine.csv"))
    with pytest.raises(ValueError, match="unknown prompt file 'nope.csv'.*published files"):
        prompts.check_source("nope.csv")


def test_resolve_prefers_a_verified_local_copy(bench_dir):
    assert prompts.resolve("vangogh_prompts.csv", data_dir=bench_dir) == bench_dir / "vangogh_prompts.csv"


def test_unknown_format_is_a_clear_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="unrecognised prompt file header"):
        prompts.read_prompts(path)
