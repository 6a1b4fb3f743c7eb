"""`alray cartography`: training dynamics from a log of per-epoch files, against a float64 NumPy
reference; the reference implementation's layout read as is; the training-side logger; bad logs.

No Ray here: the log path is plain streaming over files.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alray.cartography import DynamicsLogger, LogColumns, cartography
from alray.cartography.dynamics import REGIONS, regions
from alray.cli import main
from alray.errors import ConfigError

# ----------------------------------------------------------------------------------- reference


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reference_statistics(epochs: list[dict]) -> dict:
    """Per id, over the epochs it appears in: mean and population sd (ddof 0) of p(gold), the
    share of epochs whose argmax is gold, the count, the gold label, the last argmax."""
    seen: dict = {}
    for epoch in epochs:
        probs = epoch["probs"]
        for i, row_id in enumerate(epoch["ids"]):
            entry = seen.setdefault(row_id, {"p": [], "right": [], "gold": epoch["gold"][i]})
            entry["p"].append(probs[i, epoch["gold"][i]])
            entry["right"].append(np.argmax(probs[i]) == epoch["gold"][i])
            entry["predicted"] = int(np.argmax(probs[i]))
    return {row_id: {"gold_confidence": np.mean(e["p"]), "gold_variability": np.std(e["p"]),
                     "gold_correctness": np.mean(e["right"]), "epochs": len(e["p"]),
                     "gold": e["gold"], "predicted": e["predicted"]}
            for row_id, e in seen.items()}


def write_epoch(folder: str, epoch: int, ids, gold, values, *, fmt: str = "parquet",
                output: str = "logits", reference_names: bool = False) -> str:
    """One epoch file written by hand (not by DynamicsLogger), as another tool would."""
    os.makedirs(folder, exist_ok=True)
    id_name = "guid" if reference_names else "id"
    value_name = f"{output}_epoch_{epoch}" if reference_names else output
    if fmt == "jsonl":
        path = os.path.join(folder, f"dynamics_epoch_{epoch}.jsonl")
        with open(path, "w") as f:
            for row_id, g, v in zip(ids, gold, values):
                f.write(json.dumps({id_name: row_id, value_name: [float(x) for x in v],
                                    "gold": int(g)}) + "\n")
        return path
    path = os.path.join(folder, f"epoch{epoch:03d}.parquet")
    pq.write_table(pa.table({id_name: pa.array(ids), "gold": pa.array(gold, pa.int64()),
                             value_name: pa.array([list(map(float, v)) for v in values])}), path)
    return path


@st.composite
def training_logs(draw):
    """A random log: C classes, some rows missing from some epochs, each epoch in its own
    order, logits or probabilities (some near one-hot), int or string ids."""
    rows = draw(st.integers(1, 25))
    classes = draw(st.integers(2, 5))
    epochs = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, classes, rows)
    string_ids = draw(st.booleans())
    ids = [f"row-{i}" for i in range(rows)] if string_ids else list(range(100, 100 + rows))
    log = []
    for _ in range(epochs):
        present = np.flatnonzero(rng.random(rows) < draw(st.sampled_from([1.0, 0.7, 0.4])))
        if not len(present):
            present = np.array([int(rng.integers(rows))])
        order = rng.permutation(present)
        logits = rng.normal(scale=draw(st.sampled_from([0.5, 3.0, 30.0])),
                            size=(len(order), classes))
        log.append({"ids": [ids[i] for i in order], "gold": gold[order], "logits": logits,
                    "probs": _softmax(logits)})
    return log, draw(st.sampled_from(["logits", "probs"])), draw(st.sampled_from(["parquet",
                                                                                  "jsonl"]))


@settings(max_examples=60, deadline=None)
@given(training_logs())
def test_statistics_equal_a_float64_numpy_reference(case):
    log, output, fmt = case
    expected = reference_statistics(log)
    with tempfile.TemporaryDirectory() as tmp:
        for epoch, e in enumerate(log):
            write_epoch(f"{tmp}/log", epoch, e["ids"], e["gold"], e[output], fmt=fmt,
                        output=output)
        result = cartography(f"{tmp}/log", f"{tmp}/out")
        written = pq.read_table(f"{tmp}/out/statistics.parquet")
    assert written.equals(result.statistics)
    table = result.statistics.to_pylist()
    assert sorted(r["id"] for r in table) == sorted(expected)
    for row in table:
        want = expected[row["id"]]
        # probabilities logged as such are renormalized from float32 text/parquet; logits exact
        tolerance = 1e-6 if output == "probs" else 1e-9
        for name in ("gold_confidence", "gold_variability"):
            assert row[name] == pytest.approx(want[name], abs=tolerance), (name, row)
        assert row["gold_correctness"] == pytest.approx(want["gold_correctness"], abs=1e-12)
        assert (row["epochs"], row["gold"]) == (want["epochs"], want["gold"])
        if output == "logits":
            assert row["predicted"] == want["predicted"]
    confidence = np.array([r["gold_confidence"] for r in table])
    variability = np.array([r["gold_variability"] for r in table])
    assert [r["region"] for r in table] == list(np.asarray(REGIONS)[
        reference_regions(confidence, variability, 0.33, 0.33)])


def reference_regions(confidence, variability, hard, ambiguous) -> np.ndarray:
    n = len(confidence)
    out = np.full(n, 2)
    ranked = sorted(range(n), key=lambda i: (confidence[i], i))
    n_hard = int(hard * n + 0.5)
    out[ranked[:n_hard]] = 0
    rest = sorted(ranked[n_hard:], key=lambda i: (-variability[i], i))
    out[rest[:int(ambiguous * n + 0.5)]] = 1
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=0, max_size=40), st.floats(0, 1), st.floats(0, 1),
       st.randoms(use_true_random=False))
def test_regions_take_the_shares_lowest_confidence_then_highest_variability(conf, hard, amb,
                                                                            rnd):
    if hard + amb > 1:
        hard, amb = hard / 2, amb / 2
    confidence = np.round(np.array(conf), 1)  # ties on purpose
    variability = np.array([rnd.choice([0.0, 0.1, 0.2]) for _ in conf])
    got = regions(confidence, variability, hard, amb)
    assert got.tolist() == reference_regions(confidence, variability, hard, amb).tolist()


# ----------------------------------------------------------------------- reference layout


def _digits_like_log(folder: str, epochs: int = 4, rows: int = 60, classes: int = 3,
                     flipped: tuple[int, ...] = (3, 17, 42)) -> np.ndarray:
    """Rows a model learns, except ``flipped`` ones whose given label is wrong: the model keeps
    predicting their true class, so their gold confidence stays low."""
    rng = np.random.default_rng(7)
    truth = rng.integers(0, classes, rows)
    gold = truth.copy()
    for i in flipped:
        gold[i] = (truth[i] + 1) % classes
    for epoch in range(epochs):
        logits = rng.normal(scale=0.3, size=(rows, classes))
        logits[np.arange(rows), truth] += 1.0 + epoch  # learned better each epoch
        order = rng.permutation(rows)
        write_epoch(folder, epoch, [int(i) for i in order], gold[order], logits[order],
                    fmt="jsonl", reference_names=True)
    return gold


def test_the_reference_layout_is_read_as_is_and_the_cli_writes_all_three_outputs(tmp_path,
                                                                                    capsys):
    gold = _digits_like_log(str(tmp_path / "run" / "training_dynamics"))
    out = tmp_path / "carto"
    assert main(["cartography", str(tmp_path / "run"), "--out", str(out), "--k", "3",
                 "--classes", "a,b,c", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "60 rows over 4 epochs" in printed
    statistics = pq.read_table(out / "statistics.parquet")
    assert statistics.num_rows == 60 and set(statistics.column("epochs").to_pylist()) == {4}
    assert (out / "data_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    selection = pq.read_table(out / "selection.parquet")
    assert sorted(selection.column("id").to_pylist()) == [3, 17, 42]
    assert selection.column("gold").to_pylist() == [int(gold[i]) for i in
                                                     selection.column("id").to_pylist()]
    assert selection.column("rank").to_pylist() == [0, 1, 2]
    scores = selection.column("score").to_pylist()
    assert scores == sorted(scores, reverse=True)
    # what `alray export` and `alray report` read of it
    assert main(["export", str(out), "--format", "csv"]) == 0
    lines = (out / "exports" / "selection.csv").read_text().splitlines()
    assert lines[0].split(",")[:2] == ["rank", "id"] and len(lines) == 4
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "training dynamics" in page and "hard to learn" in page


def test_carried_columns_come_from_the_latest_epoch_that_logged_the_row(tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    for epoch in range(2):
        ids = [1, 2, 3] if epoch == 0 else [2, 3]
        logits = [[0.0, 5.0], [0.0, 5.0], [5.0, 0.0]][:len(ids)]
        table = pa.table({"id": ids, "gold": [0] * len(ids),
                          "logits": [list(x) for x in logits],
                          "text": [f"e{epoch}-{i}" for i in ids]})
        pq.write_table(table, folder / f"epoch_{epoch}.parquet")
    result = cartography(str(folder), str(tmp_path / "out"), hard=1.0, ambiguous=0.0,
                         carry=("text",))
    by_id = dict(zip(result.selection.column("id").to_pylist(),
                     result.selection.column("text").to_pylist()))
    assert by_id == {1: "e0-1", 2: "e1-2", 3: "e1-3"}


# ----------------------------------------------------------------------------------- the logger


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_the_logger_writes_a_log_that_cartography_reads_back_exactly(tmp_path, fmt):
    rng = np.random.default_rng(3)
    logger = DynamicsLogger(str(tmp_path / "dyn"), format=fmt)
    written = []
    for epoch in range(3):
        order = rng.permutation(50)
        logits = rng.normal(size=(50, 4)).astype(np.float32)
        gold = order % 4
        for start in range(0, 50, 16):  # batches, the last one short
            part = slice(start, start + 16)
            logger.log(torch.from_numpy(order[part]), torch.from_numpy(logits[part]),
                       torch.from_numpy(gold[part]))
        written.append({"ids": order.tolist(), "gold": gold,
                        "probs": _softmax(logits.astype(np.float64))})
        assert logger.end_epoch().endswith(f"dynamics_epoch_{epoch}.{fmt}")
    expected = reference_statistics(written)
    result = cartography(str(tmp_path / "dyn"), str(tmp_path / "out"))
    for row in result.statistics.to_pylist():
        assert row["gold_confidence"] == pytest.approx(
            expected[row["id"]]["gold_confidence"], abs=1e-6)
        assert row["gold_variability"] == pytest.approx(
            expected[row["id"]]["gold_variability"], abs=1e-6)


def test_an_epoch_the_logger_did_not_finish_is_never_published(tmp_path):
    logger = DynamicsLogger(str(tmp_path / "dyn"))
    logger.log([1, 2], [[0.1, 0.9], [0.8, 0.2]], [1, 0])
    logger.end_epoch()
    logger.log([1, 2], [[0.1, 0.9], [0.8, 0.2]], [1, 0])
    logger.close()  # training stopped mid-epoch
    assert sorted(os.listdir(tmp_path / "dyn")) == ["dynamics_epoch_0.parquet"]
    with pytest.raises(ValueError, match="no rows were logged"):
        DynamicsLogger(str(tmp_path / "empty")).end_epoch()


# ----------------------------------------------------------------------------------- bad logs


def _good_epoch(folder, epoch, **changes):
    values = dict(ids=[1, 2, 3], gold=[0, 1, 0], values=[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    values.update(changes)
    return write_epoch(str(folder), epoch, values["ids"], values["gold"], values["values"])


@pytest.mark.parametrize("second, message", [
    (dict(ids=[1, 2, 2]), r"epoch001.parquet: id 2 appears more than once in the epoch"),
    (dict(gold=[0, 0, 0]), r"epoch001.parquet: id 2 has gold label 0 here and 1 in an earlier"),
    (dict(gold=[0, 1, 2]), r"epoch001.parquet, row 2 \(id 3\): gold label 2 is not a class of "
                           r"the 2"),
    (dict(values=[[2.0, 0.0], [float("nan"), 1.0], [1.0, 1.0]]),
     r"epoch001.parquet, row 1 \(id 2\): the model's output holds NaN or Inf"),
    (dict(values=[[2.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]),
     r"epoch001.parquet: rows hold 3 values, earlier rows 2"),
])
def test_an_inconsistent_log_fails_with_one_line_naming_the_file_row_and_id(tmp_path, second,
                                                                           message):
    _good_epoch(tmp_path / "log", 0)
    _good_epoch(tmp_path / "log", 1, **second)
    with pytest.raises(ConfigError, match=message) as caught:
        cartography(str(tmp_path / "log"), str(tmp_path / "out"))
    assert "\n" not in str(caught.value) and str(caught.value).startswith("DYNAMICS: ")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_bad_folders_and_columns_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        cartography(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .parquet, .jsonl or .json files"):
        cartography(str(tmp_path / "empty"), str(tmp_path / "out"))
    pq.write_table(pa.table({"id": [1], "gold": [0], "logits": [[0.0, 1.0]]}),
                   tmp_path / "empty" / "final.parquet")
    with pytest.raises(ConfigError, match="final.parquet: no epoch number"):
        cartography(str(tmp_path / "empty"), str(tmp_path / "out"))
    log = tmp_path / "log"
    log.mkdir()
    pq.write_table(pa.table({"key": [1], "gold": [0], "scores": [[0.0, 1.0]]}),
                   log / "e1.parquet")
    with pytest.raises(ConfigError, match=r"no id column 'id or guid' .*--id-column"):
        cartography(str(log), str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"no logits or probs column .*--logits-column"):
        cartography(str(log), str(tmp_path / "out"), columns=LogColumns(id="key"))
    result = cartography(str(log), str(tmp_path / "out"),
                         columns=LogColumns(id="key", logits="scores"))
    assert result.statistics.column("id").to_pylist() == [1]
    with pytest.raises(ConfigError, match="--hard"):
        cartography(str(log), str(tmp_path / "out"), hard=0.7, ambiguous=0.5)


# ----------------------------------------------------------------------------------- kernels


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 12), st.integers(2, 6), st.integers(1, 5), st.integers(0, 2**32 - 1),
       st.sampled_from([torch.float32, torch.float64]))
def test_the_job_kernels_equal_numpy_over_k_samples(rows, classes, samples, seed, dtype):
    """``gold_statistics`` and ``label_issue`` over ``[B, C, K]`` (samples last) against a
    float64 NumPy reference: K epochs' checkpoints or K committee members."""
    from alray.scoring.labels import gold_statistics, label_issue

    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(rows, classes, samples))
    gold = rng.integers(0, classes, rows)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    p_gold = probs[np.arange(rows), gold, :]                      # [B, K]
    log_probs = torch.log_softmax(torch.from_numpy(logits).to(dtype), dim=1)
    got = gold_statistics(log_probs, torch.from_numpy(gold))
    tolerance = 1e-12 if dtype == torch.float64 else 2e-6
    np.testing.assert_allclose(got["gold_confidence"].double().numpy(), p_gold.mean(axis=1),
                               atol=tolerance)
    np.testing.assert_allclose(got["gold_variability"].double().numpy(), p_gold.std(axis=1),
                               atol=tolerance)
    right = (probs.argmax(axis=1) == gold[:, None]).mean(axis=1)
    assert got["gold_correctness"].double().numpy().tolist() == pytest.approx(right.tolist())
    issue = label_issue(log_probs, torch.from_numpy(gold)).double().numpy()
    np.testing.assert_allclose(issue, 1 - p_gold.mean(axis=1), atol=tolerance)
    assert ((issue >= 0) & (issue <= 1)).all()


# ----------------------------------------------------------------------- object storage


def test_the_log_is_read_from_and_the_outputs_written_to_object_storage(tmp_path, s3,
                                                                       s3_server):
    """DYNAMICS and --out as s3:// URLs on moto's server: the logger writes the log there, the
    reference layout is found under the prefix, and the outputs land beside it."""
    storage = {"s3": {"endpoint_url": s3_server}}
    s3.mkdir("training")
    local = tmp_path / "run" / "training_dynamics"
    _digits_like_log(str(local))
    for path in sorted(local.iterdir()):
        s3.put_file(str(path), f"training/run/training_dynamics/{path.name}")
    logger = DynamicsLogger("s3://training/logged", storage=storage)
    logger.log([7, 8], [[0.0, 3.0], [2.0, 0.0]], [1, 1])
    assert logger.end_epoch() == "s3://training/logged/dynamics_epoch_0.parquet"
    result = cartography("s3://training/run", "s3://training/carto", storage=storage)
    assert result.counts["rows"] == 60 and result.counts["epochs"] == 4
    assert s3.cat_file("training/carto/data_map.png")[:4] == b"\x89PNG"
    assert sorted(s3.ls("training/carto", detail=False)) == [
        f"training/carto/{name}" for name in ("data_map.png", "job.json", "selection.parquet",
                                              "statistics.parquet")]
    logged = cartography("s3://training/logged", "s3://training/carto-2", storage=storage)
    assert logged.statistics.column("id").to_pylist() == [7, 8]


# ----------------------------------------------------------------------- training hooks


def test_an_epochs_parts_from_several_processes_are_read_as_one_epoch(tmp_path):
    for part, ids in ((0, [0, 2, 4]), (1, [1, 3])):  # two ranks of a distributed run
        logger = DynamicsLogger(str(tmp_path / "dyn"), part=part)
        for _ in range(2):
            logger.log(ids, [[1.0, 0.0]] * len(ids), [0] * len(ids))
            logger.end_epoch()
    assert sorted(os.listdir(tmp_path / "dyn"))[:2] == ["dynamics_rank0_epoch_0.parquet",
                                                        "dynamics_rank0_epoch_1.parquet"]
    result = cartography(str(tmp_path / "dyn"), str(tmp_path / "out"))
    assert result.counts["epochs"] == 2 and result.counts["rows"] == 5
    assert set(result.statistics.column("epochs").to_pylist()) == {2}


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                            "ignore::FutureWarning")  # Lightning's own, on torch 2.13
def test_the_lightning_callback_logs_what_each_training_step_saw(tmp_path):
    import lightning
    from torch.utils.data import DataLoader, TensorDataset

    from alray.cartography.lightning import DynamicsCallback

    torch.manual_seed(0)
    x = torch.randn(120, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 3 classes

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(6, 3)
            self.seen = []

        def training_step(self, batch, batch_idx):
            ids, features, labels = batch
            logits = self.net(features)
            self.seen.append((self.current_epoch, ids.clone(), logits.detach().clone(),
                              labels.clone()))
            return {"loss": torch.nn.functional.cross_entropy(logits, labels),
                    "logits": logits.detach()}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    module = Module()
    loader = DataLoader(TensorDataset(torch.arange(120), x, y), batch_size=32, shuffle=True)
    trainer = lightning.Trainer(max_epochs=3, accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=str(tmp_path),
                                callbacks=[DynamicsCallback(str(tmp_path / "dyn"))])
    trainer.fit(module, loader)
    assert sorted(os.listdir(tmp_path / "dyn")) == [f"dynamics_epoch_{e}.parquet"
                                                    for e in range(3)]
    epochs = [{"ids": [], "gold": [], "probs": []} for _ in range(3)]
    for epoch, ids, logits, labels in module.seen:
        epochs[epoch]["ids"] += ids.tolist()
        epochs[epoch]["gold"] += labels.tolist()
        epochs[epoch]["probs"].append(_softmax(logits.double().numpy()))
    expected = reference_statistics([{"ids": e["ids"], "gold": np.array(e["gold"]),
                                      "probs": np.concatenate(e["probs"])} for e in epochs])
    result = cartography(str(tmp_path / "dyn"), str(tmp_path / "out"))
    assert result.counts == {**result.counts, "rows": 120, "epochs": 3}
    for row in result.statistics.to_pylist():
        for name in ("gold_confidence", "gold_variability", "gold_correctness"):
            assert row[name] == pytest.approx(expected[row["id"]][name], abs=1e-6), name
