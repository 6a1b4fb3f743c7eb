"""The job spec (alray/config.py) and how the command line reports a bad one.

Nothing here starts Ray: every command-line case fails in the checks that run before the driver
connects (spec validation, the model-file check, pool listing). Each subprocess imports torch and
ray (about 3 s), so the command-line cases are few.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import alray
from alray.config import JobSpec, apply_overrides, parse_set_option
from alray.output.commits import SCORING_KEYS
from alray.errors import ConfigError

# The smallest valid spec; relative paths are resolved against the spec file's folder.
MINIMAL: dict[str, Any] = {
    "pool": {"uri": "pool", "feature_column": "embedding"},
    "model": {"kind": "linear", "path": "head.npz"},
    "selection": {"k": 10},
    "output": {"uri": "out"},
}
DROP = object()  # a change that removes the key


def spec_with(changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """MINIMAL with dotted keys set (``{"selection.k": 5}``) or removed (``DROP``)."""
    raw = copy.deepcopy(MINIMAL)
    for dotted, value in (changes or {}).items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is DROP:
            del node[last]
        else:
            node[last] = value
    return raw


def write_spec(folder: Path, raw: Any = None, *, name: str = "job",
               text: str | None = None) -> Path:
    """Write ``raw`` (default MINIMAL) as YAML, or ``text`` verbatim, to ``folder/<name>.yaml``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(MINIMAL if raw is None else raw))
    return path


def rejection(tmp_path: Path, changes: dict[str, Any]) -> ConfigError:
    """The ConfigError that loading MINIMAL with ``changes`` raises."""
    path = write_spec(tmp_path, spec_with(changes))
    with pytest.raises(ConfigError) as info:
        JobSpec.from_yaml(path)
    return info.value


# ----------------------------------------------------------------------------------- valid specs


def test_minimal_spec_gets_the_documented_defaults(tmp_path):
    spec = JobSpec.from_yaml(write_spec(tmp_path))

    assert spec.pool.format == "parquet"
    assert spec.pool.id_column == "id"
    assert spec.pool.feature_column == "embedding"
    assert spec.pool.carry == ()
    assert spec.pool.rows_per_shard == 1_000_000
    assert spec.model.output == "logits"
    assert spec.model.column is None
    assert spec.scoring.strategy == "entropy"
    assert spec.scoring.batch_size == 8192
    assert spec.selection.k == 10
    assert spec.selection.candidates is None
    assert spec.selection.per_shard == 10
    assert spec.resources.actors is None
    assert spec.resources.gpus_per_actor == "auto"
    assert spec.resources.on_error == "fail"
    assert spec.resources.max_attempts == 3
    assert spec.resources.max_quarantined == 0.1


def test_candidates_set_per_shard(tmp_path):
    spec = JobSpec.from_yaml(write_spec(tmp_path, spec_with({"selection.candidates": 50})))
    assert spec.selection.per_shard == 50


def test_relative_paths_resolve_against_the_spec_folder_not_the_cwd(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    raw = spec_with({"pool.uri": ["../data/pool", "s3://bucket/more/", str(tmp_path / "abs")]})
    spec = JobSpec.from_yaml(write_spec(tmp_path / "jobs", raw))

    jobs = (tmp_path / "jobs").resolve()
    assert spec.pool.uri == (
        str((tmp_path / "data" / "pool").resolve()),
        "s3://bucket/more/",  # URLs are left alone
        str(tmp_path / "abs"),  # so are absolute paths
    )
    assert spec.model.path == str(jobs / "head.npz")
    assert spec.output.uri == str(jobs / "out")


def test_python_model_path_is_a_dotted_name_not_a_file(tmp_path):
    raw = spec_with({"model.kind": "python", "model.path": "mypkg.heads:build"})
    spec = JobSpec.from_yaml(write_spec(tmp_path, raw))
    assert spec.model.path == "mypkg.heads:build"


def test_precomputed_model_needs_no_path_nor_feature_column(tmp_path):
    raw = spec_with({"model": {"kind": "precomputed", "column": "logits"},
                     "pool.feature_column": DROP})
    spec = JobSpec.from_yaml(write_spec(tmp_path, raw))
    assert (spec.model.column, spec.model.path, spec.pool.feature_column) == ("logits", None, None)


def test_name_defaults_to_the_file_stem(tmp_path):
    assert JobSpec.from_yaml(write_spec(tmp_path, name="round-7")).name == "round-7"
    named = write_spec(tmp_path, {**MINIMAL, "name": "digits"}, name="other")
    assert JobSpec.from_yaml(named).name == "digits"


def test_out_replaces_output_uri_relative_to_the_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    path = write_spec(tmp_path / "jobs", spec_with({"output": DROP}))

    spec = JobSpec.from_yaml(path, out="results")
    assert spec.output.uri == str((cwd / "results").resolve())
    assert JobSpec.from_yaml(path, out="s3://bucket/run-1").output.uri == "s3://bucket/run-1"


def test_out_wins_over_output_uri(tmp_path):
    spec = JobSpec.from_yaml(write_spec(tmp_path), out=str(tmp_path / "other"))
    assert spec.output.uri == str(tmp_path / "other")


# ----------------------------------------------------------------------------------- rejections

# (changes to MINIMAL, the dotted key the message names, the value it quotes, what is allowed)
BAD_VALUES = [
    ({"selection.k": "5"}, "selection.k", "'5'", "integer >= 1"),
    ({"selection.k": True}, "selection.k", "True", "integer >= 1"),
    ({"selection.k": 0}, "selection.k", "0", "integer >= 1"),
    ({"selection.k": -3}, "selection.k", "-3", "integer >= 1"),
    ({"selection.candidates": 5}, "selection.candidates", "5", ">= selection.k (10)"),
    ({"scoring.batch_size": 0}, "scoring.batch_size", "0", "integer >= 1"),
    ({"pool.shard_rows": -1}, "pool.shard_rows", "-1", "integer >= 1"),
    ({"resources.on_error": "ignore"}, "resources.on_error", "'ignore'", "fail | skip"),
    ({"scoring.strategy": "bayes"}, "scoring.strategy", "'bayes'",
     "least_confidence | margin | ratio | entropy | predictive_entropy | bald"),
    ({"scoring.strategy": "bald"}, "scoring.strategy", "'bald'",
     "this job gives K = 1; set scoring.mc_samples >= 2 (MC dropout) or list >= 2 "
     "model.members (a committee)"),
    ({"model.kind": "python", "model.path": "m:f", "scoring.mc_samples": 4},
     "resources.gpus_per_actor", "auto", "name the device: 0 (CPU) or 1 (GPU)"),
    ({"scoring.strategy": "target_probability"}, "scoring.target_class", "target_probability",
     "give the class's index or its name"),
    ({"scoring.strategy": "target_probability", "scoring.target_class": "cat"},
     "scoring.target_class", "'cat'", "model.classes is unset"),
    ({"scoring.mc_samples": 5}, "scoring.mc_samples", "5", "a linear model has no dropout"),
    ({"scoring.strategy": "variance"}, "scoring.strategy", "'variance'", "model.task is "
     "classification"),
    ({"resources.gpus_per_actor": 2}, "resources.gpus_per_actor", "2", "auto | 0 | 1"),
    ({"resources.max_quarantined": 1.5}, "resources.max_quarantined", "1.5", "[0, 1)"),
    ({"pool.carry": 5}, "pool.carry", "5", "a list of strings"),
    ({"pool": ["a"]}, "pool", "['a']", "a mapping"),
    ({"model.kind": "sklearn"}, "model.kind", "'sklearn'",
     "linear | torchscript | python | precomputed"),
    ({"model.kind": "python", "model.path": "mypkg.heads"}, "model.path", "'mypkg.heads'",
     "'package.module:factory'"),
    ({"pool.colour": "red"}, "pool.colour", "unknown key",
     "uri, format, id_column, feature_column, image_column, image_uri_column, carry, "
     "label_column, fold_column, shard_rows, image"),
    ({"colour": {"a": 1}}, "colour", "unknown section",
     "name, pool, model, scoring, selection, output, resources"),
]


@pytest.mark.parametrize("changes, where, given, allowed", BAD_VALUES,
                         ids=[case[1] + "=" + str(case[2]) for case in BAD_VALUES])
def test_bad_value_names_key_value_and_what_is_allowed(tmp_path, changes, where, given, allowed):
    error = rejection(tmp_path, changes)

    assert isinstance(error, ValueError)
    assert isinstance(error, alray.AlrayError)
    assert error.where == where
    message = str(error)
    assert message.startswith(f"{where}: ")
    assert given in message
    assert allowed in message


MISSING = [
    ({"pool.uri": DROP}, "pool.uri"),
    ({"pool.uri": []}, "pool.uri"),
    ({"model.kind": DROP}, "model.kind"),
    ({"selection.k": DROP}, "selection.k"),
    ({"output.uri": DROP}, "output.uri"),
    ({"pool": DROP}, "pool"),
    ({"model": DROP}, "model"),
    ({"model.path": DROP}, "model.path"),
]


@pytest.mark.parametrize("changes, where", MISSING, ids=[f"{w}-{i}" for i, (_, w) in
                                                         enumerate(MISSING)])
def test_missing_required_key_is_named(tmp_path, changes, where):
    error = rejection(tmp_path, changes)
    assert error.where == where
    assert str(error).startswith(f"{where}: required")


def test_linear_model_needs_a_feature_column(tmp_path):
    error = rejection(tmp_path, {"pool.feature_column": DROP})
    assert error.where == "pool.feature_column"
    assert "model.kind is linear" in str(error)


def test_precomputed_model_needs_a_column(tmp_path):
    error = rejection(tmp_path, {"model": {"kind": "precomputed"}})
    assert error.where == "model.column"
    assert "precomputed" in str(error)


def test_yaml_that_does_not_parse_is_one_line_naming_the_file(tmp_path):
    path = write_spec(tmp_path, text="pool:\n  uri: [unclosed\nmodel: {kind: linear\n")
    with pytest.raises(ConfigError) as info:
        JobSpec.from_yaml(path)
    assert str(info.value).startswith(f"{path}: not valid YAML")
    assert "\n" not in str(info.value)


def test_spec_that_is_a_list_is_rejected(tmp_path):
    path = write_spec(tmp_path, text="- pool\n- model\n")
    with pytest.raises(ConfigError) as info:
        JobSpec.from_yaml(path)
    assert info.value.where == str(path)
    assert "must be a mapping" in str(info.value)


def test_missing_spec_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the job spec"):
        JobSpec.from_yaml(tmp_path / "nope.yaml")


def test_out_with_output_given_as_a_string_is_a_config_error(tmp_path):
    path = write_spec(tmp_path, spec_with({"output": "./out"}))
    with pytest.raises(ConfigError, match="^output: "):
        JobSpec.from_yaml(path, out=str(tmp_path / "out"))


# ----------------------------------------------------------------------------------- --set


def test_apply_overrides_sets_a_dotted_key_on_a_copy():
    raw = spec_with()
    result = apply_overrides(raw, {"scoring.strategy": "margin", "selection.k": 5})
    assert result["scoring"] == {"strategy": "margin"}
    assert result["selection"]["k"] == 5
    assert "scoring" not in raw and raw["selection"]["k"] == 10  # the input is untouched


def test_apply_overrides_refuses_to_descend_into_a_value():
    with pytest.raises(ConfigError) as info:
        apply_overrides(spec_with(), {"selection.k.x": 1})
    assert info.value.where == "selection.k"


@pytest.mark.parametrize("text, expected", [
    ("scoring.strategy=margin", ("scoring.strategy", "margin")),
    ("selection.k=5", ("selection.k", 5)),
    ("pool.carry=[a, b]", ("pool.carry", ["a", "b"])),
    ("resources.max_quarantined=0.25", ("resources.max_quarantined", 0.25)),
])
def test_parse_set_option_reads_a_yaml_scalar_or_flow_list(text, expected):
    key, value = parse_set_option(text)
    assert (key, value) == expected
    assert type(value) is type(expected[1])  # 5 is an int, not "5"


@pytest.mark.parametrize("text", ["scoring.strategy", "=margin", "", " =5"])
def test_malformed_set_names_the_option(text):
    with pytest.raises(ConfigError) as info:
        parse_set_option(text)
    assert info.value.where == "--set"
    assert repr(text) in str(info.value)
    assert "KEY=VALUE" in str(info.value)


def test_set_value_that_is_not_yaml_names_the_key():
    with pytest.raises(ConfigError, match=r"^--set pool\.carry: cannot parse"):
        parse_set_option("pool.carry=[a,")


def test_overrides_reach_the_validated_spec(tmp_path):
    overrides = dict(parse_set_option(t) for t in
                     ["scoring.strategy=margin", "selection.k=5", "pool.carry=[a, b]"])
    spec = JobSpec.from_yaml(write_spec(tmp_path), overrides=overrides)
    assert spec.scoring.strategy == "margin"
    assert spec.selection.k == 5
    assert spec.pool.carry == ("a", "b")


def test_overrides_are_validated_like_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^scoring\.strategy: got 'bald'"):
        JobSpec.from_yaml(write_spec(tmp_path), overrides={"scoring.strategy": "bald"})


def test_override_into_an_empty_section(tmp_path):
    path = write_spec(tmp_path, text=yaml.safe_dump(MINIMAL) + "scoring:\n")
    spec = JobSpec.from_yaml(path, overrides={"scoring.strategy": "margin"})
    assert spec.scoring.strategy == "margin"


# ----------------------------------------------------------------------------------- views


def test_to_dict_round_trips_through_from_dict(tmp_path):
    raw = spec_with({"pool.carry": ["uri", "label"], "selection.candidates": 40,
                     "resources": {"actors": 3, "gpus_per_actor": 0, "on_error": "skip",
                                   "max_quarantined": 2}})
    spec = JobSpec.from_yaml(write_spec(tmp_path, raw))
    data = spec.to_dict()

    assert JobSpec.from_dict(data) == spec
    assert json.loads(json.dumps(data)) == data  # plain data, as job.json records it
    assert data["pool"]["carry"] == ["uri", "label"]


def test_digest_follows_the_scoring_strategy(tmp_path):
    path = write_spec(tmp_path)
    spec = JobSpec.from_yaml(path)
    margin = JobSpec.from_yaml(path, overrides={"scoring.strategy": "margin"})
    bigger_k = JobSpec.from_yaml(path, overrides={"selection.k": 20})

    assert JobSpec.from_yaml(path).digest() == spec.digest()
    assert margin.digest() != spec.digest()
    assert margin.digest(SCORING_KEYS) != spec.digest(SCORING_KEYS)
    # Changing k changes the spec but rescores nothing.
    assert bigger_k.digest() != spec.digest()
    assert bigger_k.digest(SCORING_KEYS) == spec.digest(SCORING_KEYS)


# ----------------------------------------------------------------------------------- command line


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m alray ARGS`` in ``tmp_path``; Ray, if it started, would write under raytmp."""
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "raytmp")}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "alray", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_usage_error(tmp_path: Path, done: subprocess.CompletedProcess, where: str) -> None:
    """Exit 2, one line on stderr naming ``where``, no traceback, and Ray never started."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"alray: error: {where}: "), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "raytmp").exists(), "Ray started before the spec was rejected"


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A file where MINIMAL's model.path points; the driver only checks that it exists."""
    path = tmp_path / "head.npz"
    path.write_bytes(b"not read before Ray starts")
    return path


@pytest.mark.parametrize("changes, extra, where", [
    ({"pool.colour": "red"}, [], "pool.colour"),
    ({"selection.k": 0}, [], "selection.k"),
    ({"selection.candidates": 3}, [], "selection.candidates"),
    ({}, ["--set", "selection.k"], "--set"),
], ids=["unknown-key", "k-below-1", "candidates-below-k", "bad-set"])
def test_cli_config_error_is_one_line_exit_2(tmp_path, changes, extra, where):
    spec = write_spec(tmp_path, spec_with(changes))
    assert_usage_error(tmp_path, run_cli(tmp_path, "run", str(spec), *extra), where)


def test_cli_pool_that_does_not_exist(tmp_path, model_file):
    spec = write_spec(tmp_path)  # pool.uri is ./pool, which is not there
    done = run_cli(tmp_path, "run", str(spec))
    assert_usage_error(tmp_path, done, "pool.uri")
    assert str(tmp_path / "pool") in done.stderr


def test_cli_linear_model_file_that_does_not_exist(tmp_path):
    (tmp_path / "pool").mkdir()
    done = run_cli(tmp_path, "run", str(write_spec(tmp_path)))
    assert_usage_error(tmp_path, done, "model.path")
    assert "head.npz" in done.stderr


def test_cli_debug_adds_the_traceback(tmp_path):
    spec = write_spec(tmp_path, spec_with({"selection.k": 0}))
    done = run_cli(tmp_path, "--debug", "run", str(spec))
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr
    assert "ConfigError" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("alray: error: selection.k: ")


def test_cli_without_a_command_is_a_usage_error(tmp_path):
    done = run_cli(tmp_path)
    assert done.returncode == 2
    assert "usage: alray" in done.stderr


def test_spec_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        JobSpec.from_yaml(path)


def test_key_given_twice_is_a_config_error(tmp_path):
    path = write_spec(tmp_path, text=yaml.safe_dump(MINIMAL) + "name: a\nname: b\n")
    with pytest.raises(ConfigError, match="appears twice"):
        JobSpec.from_yaml(path)


def test_from_dict_refuses_a_list():
    with pytest.raises(ConfigError, match="mapping of sections"):
        JobSpec.from_dict([{"a": 1}])


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_gpus_per_actor_refuses_floats(value):
    with pytest.raises(ConfigError, match="gpus_per_actor"):
        JobSpec.from_dict(spec_with({"resources.gpus_per_actor": value}))
