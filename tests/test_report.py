"""``alray report OUT``: the page renders from an output folder, its counts are the pool's, its
images are real PNGs, and a browser draws it.

No Ray: each test writes the files a job writes (job.json, scores files, selection.parquet) into a
tmp folder, from scikit-learn's digits scored by a softmax over a random linear head.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from alray.errors import ConfigError
from alray.output.folder import OutputFolder
from alray.report import ReportResult, plot_data_map, report
from alray.report.plots import HEXBIN_ROWS
from alray.report.tally import PoolTally, read_selection, score_edges, tally_pool

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine & <x>"]
SHARDS = ("digits-0-1a2b3c4d", "digits-1-5e6f7a8b")
K = 30
CHROMIUM = Path("/usr/bin/chromium")


# ----------------------------------------------------------------------------------- folders


def digits_scores(seed: int = 0) -> dict[str, np.ndarray]:
    """Every digit scored as alray would: entropy of a softmax over a random linear head."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    logits = (x / 16.0) @ rng.standard_normal((64, 10)) * 0.8
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    top = np.sort(p, axis=1)[:, ::-1]
    entropy = -(p * np.log(p)).sum(axis=1) / np.log(10)
    return {"id": np.arange(len(x), dtype=np.int64), "score": entropy,
            "least_confidence": (1 - top[:, 0]) * 10 / 9, "margin": 1 - (top[:, 0] - top[:, 1]),
            "ratio": top[:, 1] / top[:, 0], "entropy": entropy,
            "predicted": p.argmax(axis=1).astype(np.int32), "confidence": top[:, 0],
            "row": np.arange(len(x), dtype=np.int64), "label": y.astype(np.int64)}


def scores_table(columns: dict[str, np.ndarray], rows: slice) -> pa.Table:
    floats = {"score", "least_confidence", "margin", "ratio", "entropy", "confidence"}
    return pa.table({name: pa.array(values[rows].astype(np.float32) if name in floats
                                    else values[rows]) for name, values in columns.items()})


def selection_table(columns: dict[str, np.ndarray], method: str) -> pa.Table:
    """The top K by (score desc, id asc); ``method`` other than topk marks the last third as
    diversity and explore picks from lower down, as those methods do."""
    score = columns["score"].astype(np.float32)
    order = np.lexsort((columns["id"], -score))
    if method == "topk":
        picked, reasons = order[:K], ["score"] * K
    else:
        picked = np.concatenate([order[:K - 10], order[200:205], order[900:905]])
        reasons = ["diversity"] * (K - 5) + ["explore"] * 5
    half = len(score) // 2
    shard = np.where(picked < half, SHARDS[0], SHARDS[1])
    return pa.table({"rank": np.arange(K, dtype=np.int64), "id": columns["id"][picked],
                     "score": pa.array(score[picked]), "shard": shard,
                     "uri": [f"file:///data/pool/{s.rsplit('-', 1)[0]}.parquet" for s in shard],
                     "predicted": columns["predicted"][picked], "reason": reasons,
                     "label": columns["label"][picked]})


def job_record(name: str, rows: int, method: str, classes=CLASSES) -> dict:
    return {
        "name": name, "status": "succeeded", "alray_version": "0.1.0",
        "spec": {"name": name,
                 "model": {"kind": "linear", "task": "classification", "classes": classes},
                 "scoring": {"strategy": "entropy", "mc_samples": 0},
                 "selection": {"k": K, "method": method, "explore": 0.0, "balance": "none"}},
        "started": "2026-11-23T10:00:00+00:00", "finished": "2026-11-23T10:00:09+00:00",
        "seconds": 9.3, "scoring_seconds": 2.5, "rows_per_second": rows / 2.5,
        "counts": {"shards": 2, "shards_done": 2, "rows_in": rows, "rows_scored": rows,
                   "rows_quarantined": 0},
    }


def write_job(out: Path, method: str = "topk", name: str = "digits-report",
              statistics: bool = True, classes=CLASSES) -> dict[str, np.ndarray]:
    """A finished job's folder: job.json, two scores files, selection.parquet."""
    columns = digits_scores()
    rows = len(columns["id"])
    (out / "scores").mkdir(parents=True)
    half = rows // 2
    for shard, part in zip(SHARDS, (slice(0, half), slice(half, rows))):
        pq.write_table(scores_table(columns, part), out / "scores" / f"{shard}.parquet",
                       row_group_size=400, write_statistics=statistics)
    pq.write_table(selection_table(columns, method), out / "selection.parquet")
    (out / "job.json").write_text(json.dumps(job_record(name, rows, method, classes)))
    return columns


def write_statistics(out: Path, rows: int, seed: int = 0) -> pa.Table:
    """Training dynamics as a cartography run would give them."""
    rng = np.random.default_rng(seed)
    confidence = rng.beta(2, 1.2, rows)
    variability = rng.uniform(0, 0.45, rows) * (1 - np.abs(2 * confidence - 1))
    correctness = np.clip(confidence + rng.normal(0, 0.15, rows), 0, 1).round(1)
    region = np.where(variability > 0.2, "ambiguous",
                      np.where(confidence > 0.5, "easy-to-learn", "hard-to-learn"))
    table = pa.table({"id": np.arange(rows), "gold_confidence": confidence,
                      "gold_variability": variability, "gold_correctness": correctness,
                      "region": region})
    pq.write_table(table, out / "statistics.parquet")
    return table


def write_simulation(out: Path) -> dict:
    """What ``alray simulate`` writes (curves, summary, plot), from made-up curves."""
    from alray.simulation.outputs import curves_table, summarize, write_outputs
    from alray.simulation.spec import from_dict

    spec = from_dict({"dataset": "digits", "initial": 10, "batch": 10, "rounds": 4, "repeats": 2,
                      "strategies": [{"name": "entropy", "scoring": {"strategy": "entropy"}}]},
                     name="digits-sim")
    points = [(strategy, repeat, r, 10 + 10 * r, 0.5 + 0.08 * r + lift + 0.01 * repeat)
              for strategy, lift in (("random", 0.0), ("entropy", 0.03))
              for repeat in range(2) for r in range(5)]
    curves = curves_table(points, ["random", "entropy"])
    summary = summarize(spec, curves, {"train_rows": 1347, "test_rows": 450, "classes": 10},
                        {"wall_seconds": 12.5, "jobs": 16})
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out, curves, summary)
    return summary


# ----------------------------------------------------------------------------------- checks


def images(html: str) -> list[bytes]:
    """The bytes of every <img> of the page; each must be an inline PNG data URI."""
    tags = re.findall(r"<img\b[^>]*>", html)
    found = []
    for tag in tags:
        src = re.search(r'src="([^"]*)"', tag).group(1)
        assert src.startswith("data:image/png;base64,"), src[:60]
        found.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return found


def assert_picture(png: bytes, min_size: tuple[int, int] = (300, 200)) -> Image.Image:
    """A PNG that PIL opens, at least ``min_size``, and not one colour."""
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG"
    assert image.width >= min_size[0] and image.height >= min_size[1], image.size
    colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 16, colors
    return image


def page(result: ReportResult) -> str:
    return Path(result.html).read_text(encoding="utf-8")


def plot_names(result: ReportResult) -> list[str]:
    return [Path(uri).stem for uri in result.plots]


@pytest.fixture
def job(tmp_path) -> Path:
    out = tmp_path / "out"
    write_job(out)
    return out


# ----------------------------------------------------------------------------------- page


def test_report_renders_a_self_contained_page(job):
    result = report(str(job))
    html = page(result)
    assert result.kind == "job"
    assert result.html == str(job / "report.html")
    assert plot_names(result) == ["scores", "class_mix", "confidence"]
    pngs = images(html)
    assert len(pngs) == 3
    for png, uri in zip(pngs, result.plots):
        assert_picture(png)
        assert Path(uri).read_bytes() == png  # the files are the page's images
    assert "<title>alray report: digits-report</title>" in html
    for forbidden in ("<script", "<link", "http://", "https://", "url("):
        assert forbidden not in html
    summary = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>", html))
    assert summary["rows in pool"] == "1,797 in 2 shards"
    assert summary["rows selected"] == f"{K}"
    assert summary["strategy"] == "entropy" and summary["method"] == "topk"
    assert summary["k"] == f"{K}" and summary["run time"].startswith("9.3 s")
    top = html.split("<h2>top 20 of the selection</h2>", 1)[1]
    assert top.count("<tr>") == 21  # header and 20 rows


def test_everything_from_the_folder_is_escaped(tmp_path):
    out = tmp_path / "out"
    write_job(out, name="<script>alert(1)</script>",
              classes=[f"<i>{i}</i> & ${i}$" for i in range(10)])
    html = page(report(str(out)))
    assert "<script" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    predicted = pq.read_table(out / "selection.parquet").column("predicted")[0].as_py()
    assert f"{predicted} (&lt;i&gt;{predicted}&lt;/i&gt; &amp; ${predicted}$)" in html


@pytest.mark.parametrize("method", ["topk", "badge"])
def test_scores_caption_follows_the_method(tmp_path, method):
    out = tmp_path / "out"
    write_job(out, method=method)
    html = page(report(str(out)))
    if method == "topk":
        assert "every row right of the line" in html
    else:
        assert "ticks along the bottom are the selected rows" in html


def test_a_local_folder_given_as_file_url(job):
    result = report(f"file://{job}")
    assert len(images(Path(job / "report.html").read_text(encoding="utf-8"))) == 3
    assert result.html == f"file://{job}/report.html"


def test_a_memory_url(job):
    fs = fsspec.filesystem("memory")
    fs.put(str(job), "/report-test/out", recursive=True)
    try:
        result = report("memory://report-test/out")
        assert result.html == "memory://report-test/out/report.html"
        html = fs.cat_file("/report-test/out/report.html").decode("utf-8")
        assert len(images(html)) == 3
        assert fs.exists("/report-test/out/report/scores.png")
    finally:
        fs.rm("/report-test", recursive=True)


def test_regression_has_no_class_plots(tmp_path):
    out = tmp_path / "out"
    columns = write_job(out)
    for shard in SHARDS:
        path = out / "scores" / f"{shard}.parquet"
        table = pq.read_table(path).drop_columns(["predicted", "confidence"])
        pq.write_table(table, path)
    selection = pq.read_table(out / "selection.parquet").drop_columns(["predicted"])
    pq.write_table(selection, out / "selection.parquet")
    result = report(str(out))
    assert plot_names(result) == ["scores"]
    assert "A regression model predicts no class" in page(result)
    assert tally_pool(OutputFolder(str(out))).rows == len(columns["id"])


# ----------------------------------------------------------------------------------- counting


@pytest.mark.parametrize("statistics", [True, False], ids=["footer-bounds", "no-statistics"])
def test_counts_are_the_pools(tmp_path, statistics):
    out = tmp_path / "out"
    columns = write_job(out, method="badge", statistics=statistics)
    folder = OutputFolder(str(out))
    selection = read_selection(folder)
    tally = tally_pool(folder, selection)
    rows = len(columns["id"])
    scores = columns["score"].astype(np.float32).astype(np.float64)
    assert tally.rows == rows and tally.non_finite == 0
    assert tally.score_counts.sum() == rows
    assert tally.score_edges[0] == scores.min() and tally.score_edges[-1] == scores.max()
    np.testing.assert_array_equal(tally.score_counts, np.histogram(scores, tally.score_edges)[0])
    assert tally.confidence_counts.sum() == rows
    np.testing.assert_array_equal(tally.class_counts, np.bincount(columns["predicted"]))
    picked = selection.columns.column("id").to_numpy()
    np.testing.assert_array_equal(
        np.sort(tally.selected_confidences()),
        np.sort(columns["confidence"][picked].astype(np.float32).astype(np.float64)))


def test_non_finite_scores_are_counted_apart():
    tally = PoolTally(score_edges(0.0, 1.0))
    tally.update(pa.table({"score": pa.array([0.0, np.nan, 0.5, np.inf, 1.0], pa.float32())}))
    assert (tally.rows, tally.non_finite, tally.score_counts.sum()) == (5, 2, 3)
    assert not tally.classification


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1, width=32), min_size=1, max_size=300),
       st.integers(1, 50), st.integers(1, 60))
def test_batched_and_merged_tallies_equal_one_histogram(values, batch, bins):
    scores = np.asarray(values, np.float32)
    edges = score_edges(float(scores.min()), float(scores.max()), bins)
    whole, merged = PoolTally(edges), PoolTally(edges)
    for start in range(0, len(scores), batch):
        part = PoolTally(edges)
        part.update(pa.table({"score": scores[start:start + batch]}))
        whole.update(pa.table({"score": scores[start:start + batch]}))
        merged.merge(part)
    expected = np.histogram(scores.astype(np.float64), edges)[0]
    np.testing.assert_array_equal(whole.score_counts, expected)
    np.testing.assert_array_equal(merged.score_counts, expected)
    assert whole.score_counts.sum() == len(scores)


# ----------------------------------------------------------------------------------- extras


def test_data_map_only_with_statistics(job):
    assert "data_map" not in plot_names(report(str(job)))
    write_statistics(job, 2_000)
    result = report(str(job))
    assert plot_names(result)[-1] == "data_map"
    assert "data map of training dynamics" in page(result)
    assert len(images(page(result))) == 4
    (job / "statistics.parquet").unlink()
    result = report(str(job))
    assert "data_map" not in plot_names(result)
    assert not (job / "report" / "data_map.png").exists()  # the earlier report's plot is gone


@pytest.mark.parametrize("rows", [500, HEXBIN_ROWS + 1], ids=["points", "hexbin"])
def test_plot_data_map(tmp_path, rows):
    table = write_statistics(tmp_path, rows)
    plot_data_map(table, tmp_path / "map.png")
    image = assert_picture((tmp_path / "map.png").read_bytes())
    buffer = io.BytesIO()
    plot_data_map({name: table.column(name).to_numpy() for name in
                   ("gold_confidence", "gold_variability", "gold_correctness")}, buffer)
    assert Image.open(io.BytesIO(buffer.getvalue())).size == image.size
    if rows > HEXBIN_ROWS:  # two panels side by side
        assert image.width > 1.8 * image.height


def test_data_map_names_missing_columns(tmp_path):
    with pytest.raises(ConfigError, match="missing column.*gold_correctness"):
        plot_data_map({"gold_confidence": [0.5], "gold_variability": [0.1]}, tmp_path / "m.png")


def test_simulation_folder_gets_learning_curves(tmp_path):
    out = tmp_path / "sim"
    summary = write_simulation(out)
    result = report(str(out))
    html = page(result)
    assert result.kind == "simulation"
    assert plot_names(result) == ["learning_curves"]
    (png,) = images(html)
    assert_picture(png)
    assert "alray report: digits-sim (simulation)" in html
    assert "<pre>" in html and "AUC" in html
    assert f"{summary['initial']} → 50" in html


def test_job_folder_with_curves_embeds_them(job):
    write_simulation(job)
    result = report(str(job))
    assert result.kind == "job"
    assert plot_names(result) == ["scores", "class_mix", "confidence", "learning_curves"]


# ----------------------------------------------------------------------------------- errors


def test_missing_folder_names_it(tmp_path):
    missing = tmp_path / "never-ran"
    with pytest.raises(ConfigError, match="run the job first") as caught:
        report(str(missing))
    assert caught.value.where == "OUT"
    assert str(missing) in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("status, hint", [
    ("running", "still running"),
    ("failed", "failed and wrote no selection.parquet \\(boom\\)"),
    ("stopped", "status stopped.*run the job first"),
])
def test_a_job_without_selection_says_why(job, status, hint):
    (job / "selection.parquet").unlink()
    record = json.loads((job / "job.json").read_text())
    (job / "job.json").write_text(json.dumps({**record, "status": status, "error": "boom"}))
    with pytest.raises(ConfigError, match=hint):
        report(str(job))


# ----------------------------------------------------------------------------------- browser


def _page_errors(stderr: str, name: str) -> list[str]:
    """Lines of chromium's stderr about the page (its own dbus, gpu and sandbox noise is not)."""
    return [line for line in stderr.splitlines() if name in line or "Uncaught" in line]


def _near(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tolerance).sum())


def test_chromium_draws_the_page(job, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: chromium not installed (Debian's chromium package)")
    result = report(str(job))
    shot = tmp_path / "shot.png"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
               f"--screenshot={shot}", "--window-size=1200,2000",
               Path(result.html).resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _page_errors(done.stderr, "report.html") == []
    image = assert_picture(shot.read_bytes(), (1200, 2000))
    pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    # The inline plots were decoded and drawn: the class-mix bars' blue and orange are on screen.
    assert _near(pixels, (0x4C, 0x72, 0xB0)) > 2_000
    assert _near(pixels, (0xDD, 0x84, 0x52)) > 500
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
