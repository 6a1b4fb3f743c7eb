"""The job spec: a YAML file, validated once on the driver into frozen objects.

Every check happens here, before any work starts; the rest of alray assumes a valid
:class:`JobSpec`. An invalid spec raises :class:`~alray.errors.ConfigError` naming the dotted key,
the value given and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from alray import _checks as checks
from alray.errors import ConfigError
from alray.scoring.registry import SCORE_NAMES, SCORES, is_custom
from alray.selection.registry import METHOD_NAMES, METHODS

__all__ = [
    "JobSpec",
    "PoolSpec",
    "ModelSpec",
    "ScoringSpec",
    "SelectionSpec",
    "OutputSpec",
    "ResourcesSpec",
    "ImageSpec",
    "S3Options",
    "StorageSpec",
    "apply_overrides",
    "read_yaml",
]

MODEL_KINDS = ("linear", "torchscript", "python", "precomputed")
TASKS = ("classification", "regression")
POOL_FORMATS = ("parquet", "images")
IMAGE_SHARD_ROWS = 1_000  # images per shard when pool.shard_rows is not given


# ----------------------------------------------------------------------------------- sections


def _section(cls):
    """Freeze a spec section: keyword-only, immutable, compared and hashed by value."""
    return dataclass(frozen=True, kw_only=True)(cls)


def _spec(default: Any = dataclasses.MISSING, check: checks.Checker | None = None):
    """A spec field; a field with no default is required."""
    return field(default=default, metadata={"check": check})


@_section
class ImageSpec:
    """Decoding and preprocessing, as torchvision users expect: EXIF orientation applied, alpha
    dropped, shorter side resized with antialiasing, center crop, scaled to [0, 1], normalized."""

    mode: str = _spec("RGB", checks.one_of("RGB", "L"))
    resize: int = _spec(256, checks.int_at_least(1))
    crop: int = _spec(224, checks.int_at_least(1))
    mean: tuple[float, ...] | None = _spec(None, checks.float_list)
    std: tuple[float, ...] | None = _spec(None, checks.float_list)

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel; ImageNet's for RGB and 0.5 for L unless given."""
        default_mean, default_std = (((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
                                     if self.mode == "RGB" else ((0.5,), (0.5,)))
        return self.mean or default_mean, self.std or default_std


def _image(value: Any, where: str) -> ImageSpec:
    spec = _build_section(ImageSpec, value or {}, where)
    mean, std = spec.stats()
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != spec.channels:
            raise ConfigError(f"{where}.{key}", f"got {len(values)} values; mode {spec.mode} "
                                                f"has {spec.channels} channel(s)")
    if any(v <= 0 for v in std):
        raise ConfigError(f"{where}.std", f"got {list(std)}; every std must be > 0")
    if spec.crop > spec.resize:
        raise ConfigError(f"{where}.crop", f"got {spec.crop}; must be <= {where}.resize "
                                           f"({spec.resize})")
    return spec


@_section
class PoolSpec:
    """Where the pool lives and which columns to read."""

    uri: tuple[str, ...] = _spec(check=checks.string_list)
    format: str = _spec("parquet", checks.one_of(*POOL_FORMATS))
    id_column: str = _spec("id", checks.string)
    feature_column: str | None = _spec(None, checks.string)
    image_column: str | None = _spec(None, checks.string)
    image_uri_column: str | None = _spec(None, checks.string)
    carry: tuple[str, ...] = _spec((), checks.string_list)
    label_column: str | None = _spec(None, checks.string)
    fold_column: str | None = _spec(None, checks.string)
    shard_rows: int | None = _spec(None, checks.int_at_least(1))
    image: ImageSpec | None = _spec(None, _image)

    @property
    def rows_per_shard(self) -> int:
        """``shard_rows``, or its default: 1,000,000 rows of parquet, 1,000 image files."""
        if self.shard_rows is not None:
            return self.shard_rows
        return IMAGE_SHARD_ROWS if self.format == "images" and not self.image_source_column \
            else 1_000_000

    @property
    def image_source_column(self) -> str | None:
        return self.image_column or self.image_uri_column

    @property
    def reads_images(self) -> bool:
        return self.format == "images"


@_section
class ModelSpec:
    """The model that turns a batch of features into logits or probabilities: one model
    (``path``), or a committee of models of one kind (``members``)."""

    kind: str = _spec(check=checks.one_of(*MODEL_KINDS))
    path: str | None = _spec(None, checks.string)
    members: tuple[str, ...] | None = _spec(None, checks.string_list)
    column: str | None = _spec(None, checks.string)
    output: str = _spec("logits", checks.one_of("logits", "probs"))
    task: str = _spec("classification", checks.one_of(*TASKS))
    classes: tuple[str, ...] | None = _spec(None, checks.string_list)

    @property
    def sources(self) -> tuple[str, ...]:
        """The file (or ``package.module:factory``) of each model: ``members``, else ``path``."""
        if self.members:
            return self.members
        return (self.path,) if self.path is not None else ()


@_section
class ScoringSpec:
    strategy: str = _spec("entropy", checks.strategy(SCORE_NAMES))
    batch_size: int = _spec(8192, checks.int_at_least(1))
    mc_samples: int = _spec(0, checks.int_at_least(0))
    target_class: int | str | None = _spec(None, checks.index_or_name)
    seed: int = _spec(0, checks.int_at_least(0))


@_section
class SelectionSpec:
    k: int = _spec(check=checks.int_at_least(1))
    candidates: int | None = _spec(None, checks.int_at_least(1))
    method: str = _spec("topk", checks.one_of(*METHOD_NAMES))
    prefilter: int = _spec(10, checks.int_at_least(1))
    explore: float = _spec(0.0, checks.share)
    power: float = _spec(1.0, checks.positive_number)
    balance: str = _spec("none", checks.one_of("none", "predicted"))
    exclude: tuple[str, ...] = _spec((), checks.string_list)
    clusters: int | None = _spec(None, checks.int_at_least(1))
    seed: int = _spec(0, checks.int_between(0, 2**63 - 1))

    @property
    def explore_count(self) -> int:
        """Rows of the selection drawn uniformly from the whole pool: ``explore * k``, rounded."""
        return min(self.k, int(self.explore * self.k + 0.5))

    @property
    def method_count(self) -> int:
        """Rows the method picks: ``k`` less the explore share."""
        return self.k - self.explore_count

    @property
    def prefiltered(self) -> int:
        """How many of the global top candidates the method chooses among: ``prefilter * k``
        for a diversity method, or when class caps may pass over some; else ``k``."""
        if METHODS[self.method].diversity or self.balance == "predicted":
            return self.prefilter * self.k
        return self.k

    @property
    def per_shard(self) -> int:
        """How many candidates each shard keeps for the reducer (M >= k; ``prefilter * k`` for
        a diversity method, unless ``candidates`` says more)."""
        return self.candidates if self.candidates is not None else self.prefiltered


@_section
class OutputSpec:
    uri: str = _spec(check=checks.string)


@_section
class ResourcesSpec:
    actors: int | None = _spec(None, checks.actors)
    gpus_per_actor: str | int = _spec("auto", checks.gpus)
    on_error: str = _spec("fail", checks.one_of("fail", "skip"))
    max_attempts: int = _spec(3, checks.int_at_least(1))
    max_quarantined: float | int = _spec(0.1, checks.share_or_count)
    actor_start_timeout: float = _spec(600.0, checks.positive_number)


_SECRETS = ("key", "secret", "token", "session_token", "access_key", "secret_key",
            "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "password")


@_section
class S3Options:
    """The closed set of S3 options a spec may give; credentials come from the standard AWS
    environment variables, config files or instance roles, never from the spec."""

    endpoint_url: str | None = _spec(None, checks.string)
    region: str | None = _spec(None, checks.string)
    anon: bool = _spec(False, checks.boolean)
    profile: str | None = _spec(None, checks.string)

    def fsspec(self) -> dict[str, Any]:
        """The same options in s3fs's words."""
        options: dict[str, Any] = {"anon": self.anon}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        if self.profile:
            options["profile"] = self.profile
        return options


def _s3_options(value: Any, where: str) -> S3Options | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        for key in value:
            if str(key).lower() in _SECRETS:
                raise ConfigError(f"{where}.{key}", "credentials are refused in a job spec; set "
                                                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                                                    "a profile, or an instance role instead")
    return _build_section(S3Options, value, where)


@_section
class StorageSpec:
    """Object-storage options by protocol, mapped explicitly to fsspec."""

    s3: S3Options | None = _spec(None, _s3_options)

    def fsspec(self) -> dict[str, dict[str, Any]]:
        """``{protocol: fsspec options}`` for every protocol the spec configures."""
        if self.s3 is None:
            return {}
        return {"s3": self.s3.fsspec(), "s3a": self.s3.fsspec()}


_SECTIONS: dict[str, type] = {
    "pool": PoolSpec,
    "model": ModelSpec,
    "scoring": ScoringSpec,
    "selection": SelectionSpec,
    "output": OutputSpec,
    "resources": ResourcesSpec,
    "storage": StorageSpec,
}
_REQUIRED_SECTIONS = ("pool", "model", "selection", "output")


def _build_section(cls: type, raw: Any, where: str):
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"got {checks.describe(raw)}; expected a mapping of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            allowed = ", ".join(fields)
            raise ConfigError(f"{where}.{key}", f"unknown key; {where} takes: {allowed}")
    values = {}
    for name, f in fields.items():
        if name in raw and raw[name] is not None:
            values[name] = f.metadata["check"](raw[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name}", f"required key is missing; add it under {where}:")
    return cls(**values)


def _is_url(path: str) -> bool:
    return "://" in path


def _resolve(path: str, base_dir: Path) -> str:
    """Make a relative local path relative to the spec file's folder; leave URLs alone."""
    if _is_url(path) or os.path.isabs(path):
        return path
    return str((base_dir / path).resolve())


# ----------------------------------------------------------------------------------- JobSpec


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """Parse the YAML file ``path`` (an empty file is ``{}``), refusing a key given twice in one
    mapping; any problem is a :class:`ConfigError` naming the file and what it is (``what``)."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the {what} ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text (byte {exc.start}); save the {what} as "
                                     "UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {' '.join(str(exc).split())}") from None
    return {} if raw is None else raw


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)



@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """A validated job spec. Build it with :meth:`from_yaml` or :meth:`from_dict`."""

    name: str
    pool: PoolSpec
    model: ModelSpec
    scoring: ScoringSpec
    selection: SelectionSpec
    output: OutputSpec
    resources: ResourcesSpec
    storage: StorageSpec = field(default_factory=StorageSpec)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Mapping[str, Any] | None = None,
                  out: str | None = None) -> "JobSpec":
        """Read, override and validate a spec file; relative paths are relative to its folder."""
        path = Path(path)
        raw = read_yaml(path, "job spec")
        if not isinstance(raw, dict):
            raise ConfigError(str(path), f"got {checks.describe(raw)}; the job spec must be a mapping "
                                         "of sections (pool:, model:, selection:, output:)")
        raw.setdefault("name", path.stem)
        return cls.from_dict(raw, base_dir=path.parent, overrides=overrides, out=out)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None,
                  overrides: Mapping[str, Any] | None = None, out: str | None = None) -> "JobSpec":
        """Validate a spec given as a mapping (the parsed YAML).

        Args:
            raw: the spec's sections.
            base_dir: folder that relative paths in the spec are relative to (default: cwd).
            overrides: dotted keys to set first, as ``--set`` does.
            out: replaces ``output.uri`` (relative to the current directory), as ``--out`` does.
        """
        if not isinstance(raw, Mapping):
            raise ConfigError("spec", f"got {checks.describe(raw)}; a job spec is a mapping of sections")
        raw = apply_overrides(raw, overrides or {})
        if out is not None:
            raw = apply_overrides(raw, {"output.uri": _resolve(out, Path.cwd())})
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        for key in raw:
            if key not in _SECTIONS and key != "name":
                allowed = ", ".join(["name", *_SECTIONS])
                raise ConfigError(key, f"unknown section; a job spec takes: {allowed}")
        for key in _REQUIRED_SECTIONS:
            if key not in raw:
                raise ConfigError(key, "required section is missing; see docs/job-spec.md")
        sections = {key: _build_section(c, raw.get(key) or {}, key) for key, c in _SECTIONS.items()}
        name = checks.string(raw.get("name", "alray-job"), "name")
        spec = cls(name=name, **sections)
        return _check_across_sections(_resolve_paths(spec, base))

    # -- views -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what ``job.json`` records)."""
        return _plain(dataclasses.asdict(self))

    def digest(self, keys: tuple[str, ...] | None = None) -> str:
        """sha256 of the spec (or of the listed dotted keys) as canonical JSON."""
        data = self.to_dict()
        if keys is not None:
            data = {k: _get_dotted(data, k) for k in keys}
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def replace(self, **changes) -> "JobSpec":
        return dataclasses.replace(self, **changes)

    @property
    def fsspec_storage(self) -> dict[str, dict[str, Any]]:
        """fsspec options by protocol, for every path the job reads or writes."""
        return self.storage.fsspec()


def _plain(value: Any) -> Any:
    """Tuples as lists, all the way down (YAML and JSON have lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _resolve_paths(spec: JobSpec, base: Path) -> JobSpec:
    pool = dataclasses.replace(spec.pool, uri=tuple(_resolve(u, base) for u in spec.pool.uri))
    model = spec.model
    if model.kind != "python":
        model = dataclasses.replace(
            model, path=None if model.path is None else _resolve(model.path, base),
            members=None if model.members is None else tuple(_resolve(m, base)
                                                             for m in model.members))
    output = dataclasses.replace(spec.output, uri=_resolve(spec.output.uri, base))
    selection = dataclasses.replace(
        spec.selection, exclude=tuple(_resolve(u, base) for u in spec.selection.exclude))
    return dataclasses.replace(spec, pool=pool, model=model, output=output, selection=selection)


def _check_image_pool(spec: JobSpec) -> JobSpec:
    pool = spec.pool
    if spec.model.kind not in ("torchscript", "python"):
        raise ConfigError("model.kind", f"got {spec.model.kind}; an image pool needs a "
                                        "torchscript or python model that takes [B, C, H, W]")
    if pool.image_column and pool.image_uri_column:
        raise ConfigError("pool.image_uri_column", "give image_column or image_uri_column, "
                                                   "not both")
    if pool.feature_column:
        raise ConfigError("pool.feature_column", "not used by an image pool; remove it")
    if pool.carry and not pool.image_source_column:
        raise ConfigError("pool.carry", "an image folder has no columns to carry; carry needs a "
                                        "parquet pool with image_column or image_uri_column")
    _check_model_path(spec)
    image = pool.image or _image({}, "pool.image")
    return dataclasses.replace(spec, pool=dataclasses.replace(pool, image=image))


def _check_across_sections(spec: JobSpec) -> JobSpec:
    """Rules that involve more than one key."""
    if not spec.pool.uri:
        raise ConfigError("pool.uri", "required key is missing; name a folder, glob or file")
    _check_selection(spec)
    _check_scoring(spec)
    _check_labels(spec)
    kind = spec.model.kind
    if spec.pool.format == "images":
        return _check_image_pool(spec)
    if spec.pool.image is not None or spec.pool.image_source_column:
        raise ConfigError("pool.format", "got parquet; set pool.format: images to read "
                                         "pool.image, image_column or image_uri_column")
    if kind == "precomputed":
        if spec.model.column is None:
            raise ConfigError("model.column", "required when model.kind is precomputed; "
                                              "name the column that holds the model's output")
    else:
        _check_model_path(spec)
        if spec.pool.feature_column is None:
            raise ConfigError("pool.feature_column",
                              f"required when model.kind is {kind}; name the embedding column")
    return spec


def _check_model_path(spec: JobSpec) -> None:
    model = spec.model
    if model.path is not None and model.members is not None:
        raise ConfigError("model.members", "give model.path (one model) or model.members (a "
                                           "committee), not both")
    if not model.sources:
        raise ConfigError("model.path", f"required when model.kind is {model.kind}; name the "
                                        "model's file (or package.module:factory), or list "
                                        "model.members")
    key = "model.members" if model.members else "model.path"
    for source in model.sources:
        if model.kind == "python" and ":" not in source:
            raise ConfigError(key, f"got {source!r}; a python model is named "
                                   "'package.module:factory'")


def samples_per_row(spec: JobSpec) -> int:
    """K: the model outputs per row (MC passes times committee members; 1 for one pass). With
    ``pool.fold_column`` each row meets one member only: its out-of-fold model."""
    members = len(spec.model.members) if spec.model.members and not spec.pool.fold_column else 1
    return max(1, spec.scoring.mc_samples) * members


def _check_scoring(spec: JobSpec) -> None:
    """The strategy against the model: samples, task, target class, embedding."""
    model, scoring = spec.model, spec.scoring
    if model.kind == "precomputed" and model.members:
        raise ConfigError("model.members", "a precomputed output has no members; give "
                                           "model.column only")
    if scoring.mc_samples and model.kind in ("linear", "precomputed"):
        raise ConfigError("scoring.mc_samples", f"got {scoring.mc_samples}; a {model.kind} model "
                                                "has no dropout: MC dropout needs a python or "
                                                "torchscript model with dropout modules")
    if scoring.mc_samples and spec.resources.gpus_per_actor == "auto":
        raise ConfigError("resources.gpus_per_actor", "got auto with scoring.mc_samples; MC "
                                                      "dropout masks differ between CPU and GPU "
                                                      "generators, so name the device: 0 (CPU) or "
                                                      "1 (GPU), and resumes stay byte-identical")
    if is_custom(scoring.strategy):
        if model.task == "regression":
            raise ConfigError("scoring.strategy", f"got {scoring.strategy!r}; your own score takes "
                                                  "class probabilities [B, C, K], and "
                                                  "model.task is regression: use variance")
        return
    score = SCORES[scoring.strategy]
    if score.task != model.task:
        fitting = [n for n, s in SCORES.items() if s.task == model.task]
        raise ConfigError("scoring.strategy", f"got {scoring.strategy!r}, a {score.task} score; "
                                              f"model.task is {model.task}, whose scores are: "
                                              f"{', '.join(fitting)}")
    if score.needs_samples and samples_per_row(spec) < 2:
        raise ConfigError("scoring.strategy", f"got {scoring.strategy!r}, which compares K > 1 "
                                              f"samples per row and this job gives K = "
                                              f"{samples_per_row(spec)}; set scoring.mc_samples "
                                              ">= 2 (MC dropout) or list >= 2 model.members "
                                              "(a committee)")
    if score.needs_target:
        target_index(spec)
    if score.needs_embedding and model.kind == "precomputed":
        raise ConfigError("scoring.strategy", f"{scoring.strategy} needs an embedding; a "
                                              "precomputed output has none: use a linear model, "
                                              "or a model that returns (output, embedding)")


def _check_labels(spec: JobSpec) -> None:
    """``pool.label_column`` and ``pool.fold_column`` against the model and the strategy."""
    pool, model = spec.pool, spec.model
    strategy = spec.scoring.strategy
    if not is_custom(strategy) and SCORES[strategy].needs_labels and pool.label_column is None:
        raise ConfigError("pool.label_column", f"required by scoring.strategy "
                                               f"{spec.scoring.strategy}; name the column of "
                                               "the given labels")
    if pool.label_column is not None:
        if model.task != "classification":
            raise ConfigError("pool.label_column", "label statistics need class probabilities; "
                                                   "model.task is regression")
        if pool.format == "images" and not pool.image_source_column:
            raise ConfigError("pool.label_column", "an image folder has no columns; give a "
                                                   "parquet pool with image_uri_column and a "
                                                   "label column")
    if pool.fold_column is None:
        return
    if pool.label_column is None:
        raise ConfigError("pool.fold_column", "out-of-fold scoring is for finding label "
                                              "errors; name the given labels in "
                                              "pool.label_column too")
    if not model.members or len(model.members) < 2:
        raise ConfigError("pool.fold_column", "needs one model per fold in model.members "
                                              "(member i trained without fold i)")


def _check_selection(spec: JobSpec) -> None:
    """The selection method against the candidates and the model."""
    selection = spec.selection
    method = METHODS[selection.method]
    if selection.candidates is not None and selection.candidates < selection.prefiltered:
        need = (f"selection.prefilter * selection.k ({selection.prefilter} * {selection.k}), "
                f"since {method.name} chooses among them" if method.diversity
                else f"selection.k ({selection.k})")
        raise ConfigError("selection.candidates",
                          f"got {selection.candidates}; must be >= {need}")
    regression = spec.model.task == "regression"
    if regression and (method.classification_only or selection.balance == "predicted"):
        key = "selection.method" if method.classification_only else "selection.balance"
        value = method.name if method.classification_only else "predicted"
        raise ConfigError(key, f"got {value}, which needs class probabilities; model.task is "
                               "regression")
    if method.needs_samples and samples_per_row(spec) < 2:
        raise ConfigError("selection.method", f"got {method.name}, which needs K > 1 samples per "
                                              f"row and this job gives K = "
                                              f"{samples_per_row(spec)}; set scoring.mc_samples "
                                              ">= 2 or list >= 2 model.members")
    if "embedding" in method.vectors and spec.model.kind == "precomputed":
        raise ConfigError("selection.method", f"got {method.name}, which needs an embedding; a "
                                              "precomputed output has none: use a linear model, "
                                              "or a model that returns (output, embedding)")


def target_index(spec: JobSpec) -> int:
    """``scoring.target_class`` as a class index (a name is looked up in ``model.classes``)."""
    target, classes = spec.scoring.target_class, spec.model.classes
    if target is None:
        raise ConfigError("scoring.target_class", f"required by {spec.scoring.strategy}; give "
                                                  "the class's index or its name")
    if isinstance(target, str):
        if not classes or target not in classes:
            known = f"model.classes is {list(classes)}" if classes else "model.classes is unset"
            raise ConfigError("scoring.target_class", f"got {target!r}, not a class name ({known});"
                                                      " give an index or a name in model.classes")
        return classes.index(target)
    if classes and target >= len(classes):
        raise ConfigError("scoring.target_class", f"got {target}; model.classes has "
                                                  f"{len(classes)} classes (0..{len(classes) - 1})")
    return target


# ----------------------------------------------------------------------------------- overrides


def _get_dotted(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each dotted key set (``{"scoring.strategy": "margin"}``)."""
    result = copy.deepcopy(dict(raw)) if raw else {}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if not all(parts):
            raise ConfigError(dotted, "not a dotted spec key such as scoring.strategy")
        node = result
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # absent, or an empty section (`scoring:` reads as null)
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(".".join(parts[: i + 1]),
                                  f"got {checks.describe(node[part])}; expected a section (a mapping)")
            node = node[part]
        node[parts[-1]] = value
    return result


def parse_set_option(text: str) -> tuple[str, Any]:
    """Parse one ``--set KEY=VALUE``; the value is a YAML scalar or flow list."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("--set", f"got {text!r}; expected KEY=VALUE, e.g. scoring.strategy=margin")
    try:
        parsed = yaml.safe_load(value) if value else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}", f"cannot parse the value {value!r} as YAML") from None
    return key, parsed
