"""The simulation spec (``SIM.yaml``): read and validated once, strictly, into frozen objects.

Unknown keys, wrong types and impossible values raise :class:`~alray.errors.ConfigError` naming the
dotted key (``strategies[1].selection.method``). Each strategy's fragment is checked by building
the job spec a round would run, so a fragment fails here exactly as the job would, and a strategy
that needs K > 1 outputs per row is checked against the learner. Nothing here imports torch or
Ray; checks that need the data (enough rows for the rounds) run when it is loaded.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


from alray import _checks as checks
from alray.errors import ConfigError
from alray.simulation.jobs import FRAGMENT_SECTIONS, OWNED_KEYS, base_job, merge
from alray.simulation.learners import DEFAULT_MEMBERS, LEARNER_NAMES, LEARNERS

__all__ = ["BASELINE", "DATASETS", "SimSpec", "StrategySpec", "load_spec"]

#: scikit-learn's datasets by name (loaded lazily: scikit-learn is in the ``demo`` extra).
DATASETS = ("digits", "iris", "wine", "breast_cancer")
#: The baseline every simulation runs; its name may not be used by a strategy.
BASELINE = "random"
_BASELINE_FRAGMENT: dict[str, Any] = {"selection": {"method": "random"}}
_PARQUET_COLUMNS = {"id_column": "id", "feature_column": "embedding", "label_column": "label"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, kw_only=True)
class StrategySpec:
    """One strategy: its name and its job-spec fragment (sections of ``FRAGMENT_SECTIONS``)."""

    name: str
    fragment: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SimSpec:
    """A validated simulation. Build it with :func:`load_spec`.

    Attributes:
        dataset: a scikit-learn dataset name (:data:`DATASETS`) or a parquet URI (resolved).
        id_column, feature_column, label_column: the parquet dataset's columns (None for
            scikit-learn's datasets).
        test_fraction: share of each class held out for accuracy, never selectable.
        initial, batch, rounds: labels = initial + round x batch, round 0..rounds.
        repeats: runs per strategy, seeds 0..repeats-1.
        members: committee size (``learner: ensemble``).
        shards: pool files written per repeat.
        strategies: the baseline ``random`` first, then the spec's, in order.
        out: the output folder (default: ``<name>-sim`` beside the spec file).
    """

    name: str
    dataset: str
    id_column: str | None = None
    feature_column: str | None = None
    label_column: str | None = None
    test_fraction: float = 0.25
    learner: str = "logistic"
    members: int = DEFAULT_MEMBERS
    initial: int = 10
    batch: int = 10
    rounds: int = 20
    repeats: int = 5
    shards: int = 4
    strategies: tuple[StrategySpec, ...] = ()
    out: str = ""

    @property
    def is_parquet(self) -> bool:
        return self.dataset not in DATASETS

    @property
    def labels_needed(self) -> int:
        """Train rows a run labels by its last round: ``initial + rounds x batch``."""
        return self.initial + self.rounds * self.batch

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what ``summary.json`` records)."""
        data = dataclasses.asdict(self)
        data["strategies"] = [{"name": s.name, **s.fragment} for s in self.strategies]
        return data


def _share_open(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(where, f"got {checks.describe(value)}; expected a share between 0 and "
                                 "1, both excluded")
    return float(value)


_FIELDS: dict[str, checks.Checker] = {
    "name": checks.string,
    "dataset": checks.string,
    "id_column": checks.string,
    "feature_column": checks.string,
    "label_column": checks.string,
    "test_fraction": _share_open,
    "learner": checks.one_of(*LEARNER_NAMES),
    "members": checks.int_at_least(2),
    "initial": checks.int_at_least(1),
    "batch": checks.int_at_least(1),
    "rounds": checks.int_at_least(1),
    "repeats": checks.int_at_least(1),
    "shards": checks.int_at_least(1),
    "out": checks.string,
}


# ----------------------------------------------------------------------------------- strategies


def _rename(exc: ConfigError, prefix: str) -> ConfigError:
    """The same error, its key under ``prefix`` (``strategies[1].``)."""
    message = str(exc)[len(exc.where) + 2:]
    return ConfigError(f"{prefix}{exc.where}", message)


def _check_sections(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    fragment = {}
    for section, values in raw.items():
        if section == "name":
            continue
        if section not in FRAGMENT_SECTIONS:
            allowed = ", ".join(["name", *FRAGMENT_SECTIONS])
            reason = ("the learner decides the model" if section == "model" else
                      "each run writes its own output folder" if section == "output" else
                      "unknown key")
            raise ConfigError(f"{where}.{section}", f"{reason}; a strategy takes: {allowed}")
        if values is not None and not isinstance(values, Mapping):
            raise ConfigError(f"{where}.{section}", f"got {checks.describe(values)}; expected a "
                                                    "mapping of job-spec keys")
        for key in values or {}:
            owner = OWNED_KEYS.get(f"{section}.{key}")
            if owner:
                raise ConfigError(f"{where}.{section}.{key}", f"set by the simulator ({owner}); "
                                                              "remove it from the strategy")
        fragment[section] = dict(values or {})
    return fragment


def _check_samples(fragment: Mapping[str, Any], where: str, name: str, learner: str,
                   members: int) -> None:
    """A score or method that needs K > 1 against what the learner gives."""
    from alray.scoring.registry import SCORES
    from alray.selection.registry import METHODS

    entry = LEARNERS[learner]
    scoring, selection = fragment.get("scoring", {}), fragment.get("selection", {})
    mc_samples = scoring.get("mc_samples") or 0
    if mc_samples and not entry.dropout:
        raise ConfigError(f"{where}.scoring.mc_samples", f"got {mc_samples!r} in strategy "
                                                         f"{name!r}; learner {learner} has no "
                                                         "dropout: MC dropout needs learner: mlp")
    samples = entry.samples(members, mc_samples if isinstance(mc_samples, int) else 0)
    needs = [(f"{where}.scoring.strategy", scoring.get("strategy"), SCORES),
             (f"{where}.selection.method", selection.get("method"), METHODS)]
    for key, value, registry in needs:
        if isinstance(value, str) and value in registry and registry[value].needs_samples \
                and samples < 2:
            raise ConfigError(key, f"got {value!r} in strategy {name!r}, which needs K > 1 "
                                   f"outputs per row; learner {learner} gives K = {samples}: use "
                                   "learner: ensemble, or learner: mlp with scoring: "
                                   "{mc_samples: 10} in this strategy")


def _placeholder_model(learner: str, members: int) -> dict[str, Any]:
    """A model section of the learner's kind; the files need not exist to check a spec."""
    entry = LEARNERS[learner]
    suffix = ".pt" if entry.model_kind == "torchscript" else ".safetensors"
    if entry.committee:
        return {"kind": entry.model_kind, "members": [f"member-{m}{suffix}"
                                                      for m in range(members)]}
    return {"kind": entry.model_kind, "path": f"model{suffix}"}


def check_fragment(fragment: Mapping[str, Any], where: str, learner: str, members: int,
                   batch: int) -> None:
    """Build the job spec a round of this strategy would run, with placeholder paths."""
    from alray.config import JobSpec

    base = base_job(name="check", pool_uri="pool", model=_placeholder_model(learner, members),
                    k=batch, ledger="ledger", seed=0, output_uri="out")
    try:
        JobSpec.from_dict(merge(base, fragment), base_dir=Path.cwd())
    except ConfigError as exc:
        raise _rename(exc, f"{where}.") from None


def _strategy(raw: Any, index: int, learner: str, members: int, batch: int) -> StrategySpec:
    where = f"strategies[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"got {checks.describe(raw)}; a strategy is a mapping with a "
                                 "name and job-spec sections, e.g. {name: entropy, scoring: "
                                 "{strategy: entropy}}")
    if "name" not in raw or raw["name"] is None:
        raise ConfigError(f"{where}.name", "required key is missing; name the strategy")
    name = checks.string(raw["name"], f"{where}.name")
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}.name", f"got {name!r}; a name is letters, digits, '_', '-' "
                                           "and '.' (it names folders), starting with a letter "
                                           "or digit")
    if name == BASELINE:
        raise ConfigError(f"{where}.name", f"got {name!r}; the baseline {BASELINE!r} is always "
                                           "run: give this strategy another name")
    fragment = _check_sections(raw, where)
    _check_samples(fragment, where, name, learner, members)
    check_fragment(fragment, where, learner, members, batch)
    return StrategySpec(name=name, fragment=fragment)


def _strategies(raw: Any, learner: str, members: int, batch: int) -> tuple[StrategySpec, ...]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ConfigError("strategies", f"got {checks.describe(raw)}; expected a list of "
                                        "strategies")
    found = [_strategy(item, i, learner, members, batch) for i, item in enumerate(raw)]
    seen: dict[str, int] = {}
    for i, strategy in enumerate(found):
        if strategy.name in seen:
            raise ConfigError(f"strategies[{i}].name", f"got {strategy.name!r}, already the name "
                                                       f"of strategies[{seen[strategy.name]}]; "
                                                       "names must differ")
        seen[strategy.name] = i
    return (StrategySpec(name=BASELINE, fragment=_BASELINE_FRAGMENT), *found)


# ----------------------------------------------------------------------------------- the spec


def _values(raw: Mapping[str, Any]) -> dict[str, Any]:
    for key in raw:
        if key not in _FIELDS and key != "strategies":
            allowed = ", ".join([*_FIELDS, "strategies"])
            raise ConfigError(str(key), f"unknown key; a simulation spec takes: {allowed}")
    values = {key: check(raw[key], key) for key, check in _FIELDS.items()
              if raw.get(key) is not None}
    if "dataset" not in values:
        raise ConfigError("dataset", f"required key is missing; give one of "
                                     f"{' | '.join(DATASETS)}, or a parquet file, folder or URI")
    return values


def _check_dataset(values: dict[str, Any], base_dir: Path) -> None:
    """Columns only for parquet; a parquet dataset's path resolved against the spec's folder."""
    dataset = values["dataset"]
    if dataset in DATASETS:
        for key in _PARQUET_COLUMNS:
            if key in values:
                raise ConfigError(key, f"only for a parquet dataset; {dataset} brings its own "
                                       "columns: remove it")
        return
    if not ("://" in dataset or dataset.endswith(".parquet") or "/" in dataset
            or os.sep in dataset):
        raise ConfigError("dataset", f"got {dataset!r}; expected one of {' | '.join(DATASETS)}, "
                                     "or a parquet file, folder or URI (a path with '/')")
    if "://" not in dataset and not os.path.isabs(dataset):
        values["dataset"] = str((base_dir / dataset).resolve())
    for key, default in _PARQUET_COLUMNS.items():
        values.setdefault(key, default)


def _check_learner(values: dict[str, Any]) -> None:
    learner = values.get("learner", "logistic")
    if "members" in values and not LEARNERS[learner].committee:
        raise ConfigError("members", f"got {values['members']}; only learner: ensemble has "
                                     f"members, and learner is {learner}")


def from_dict(raw: Mapping[str, Any], base_dir: str | os.PathLike | None = None,
              name: str = "simulation") -> SimSpec:
    """Validate a simulation given as a mapping; relative paths are relative to ``base_dir``
    (default: the current directory)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("spec", f"got {checks.describe(raw)}; a simulation spec is a mapping "
                                  "(dataset:, learner:, strategies:, ...)")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    values = _values(raw)
    values.setdefault("name", name)
    if not _NAME.fullmatch(values["name"]):
        raise ConfigError("name", f"got {values['name']!r}; a name is letters, digits, '_', '-' "
                                  "and '.' (it names the output folder), starting with a letter "
                                  "or digit")
    _check_dataset(values, base)
    _check_learner(values)
    out = values.get("out", f"{values['name']}-sim")
    values["out"] = out if "://" in out or os.path.isabs(out) else str((base / out).resolve())
    spec = SimSpec(**values)
    strategies = _strategies(raw.get("strategies"), spec.learner, spec.members, spec.batch)
    return dataclasses.replace(spec, strategies=strategies)


def _stem(path: Path) -> str:
    """``digits.sim.yaml`` -> ``digits``."""
    stem = path.name
    for suffix in (".yaml", ".yml", ".sim"):
        stem = stem.removesuffix(suffix)
    return stem or "simulation"


def from_yaml(path: str | os.PathLike) -> SimSpec:
    """Read and validate a ``SIM.yaml``; relative paths are relative to its folder."""
    from alray.config import read_yaml

    path = Path(path)
    return from_dict(read_yaml(path, "simulation spec"), base_dir=path.parent, name=_stem(path))


def load_spec(spec: SimSpec | Mapping[str, Any] | str | os.PathLike) -> SimSpec:
    """A :class:`SimSpec` from itself, a mapping (the parsed YAML) or a ``SIM.yaml`` path."""
    if isinstance(spec, SimSpec):
        return spec
    if isinstance(spec, Mapping):
        return from_dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        return from_yaml(spec)
    raise ConfigError("spec", f"got {checks.describe(spec)}; give a SIM.yaml path, a mapping or "
                              "a SimSpec")
