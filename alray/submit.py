"""``alray submit``: run a job spec on a Ray cluster through Ray's Jobs API.

The spec is validated here, on the submitting machine, then travels with the local files it names
in the job's runtime environment (its ``working_dir``)::

    job.yaml                     the spec as given (``--set`` applied), validated here, paths
                                 resolved and model files renamed
    model-files/head.safetensors a local model.path (members: model-files/<i>/<name>)
    mypackage/                   the package of a local ``python`` model or score
    alray/                       with ``pip=True`` only: this alray's own code

and the job's entrypoint is ``python -m alray run job.yaml --address auto`` in that folder.

What stays as given: URIs with a scheme (``s3://``, ``gs://``, ``https://``) are read by the
cluster with its own credentials (its roles; none travel from here); ``python`` modules this
machine finds installed (site-packages) or cannot find are left to the cluster's Python. Local
``pool.uri``, ``output.uri`` and ``selection.exclude`` paths mean nothing on another machine and
are refused, except when the head is on this machine (127.0.0.1, localhost) or the caller says
every node mounts them (``shared_paths``).

alray itself must be installed on the cluster. ``pip=True`` ships this alray's code in the working
directory instead, and asks Ray's ``pip`` runtime environment for its dependencies (Ray excepted:
the cluster's runs the job). Ray builds that environment on top of the cluster's packages, so
what is already there is not installed again; what is missing comes from the cluster's package
index. A requirement ``alray==<version>`` would instead need alray published on that index, and
would not carry local changes.

Staging is plain Python, here; talking to the head (the Jobs API, with a time limit on every
question) is :mod:`alray.runtime.jobs`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import site
import sysconfig
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import yaml

from alray.config import JobSpec, apply_overrides, read_yaml
from alray.errors import ConfigError
from alray.models.files import find_module

__all__ = ["ENTRYPOINT", "MAX_SHIPPED_BYTES", "Submission", "submit"]

#: The most a submission ships in its working directory. Ray uploads it through the head's control
#: store and refuses packages over 512 MiB; big models belong on shared storage.
MAX_SHIPPED_BYTES = 100 * 2**20
ENTRYPOINT = "python -m alray run job.yaml --address auto"
FILES_FOLDER = "model-files"  # a hyphen: never the name of an importable package

_LOCAL_SCHEMES = ("", "file", "local")
_WHAT_IS_READ = {"pool.uri": "reads the pool from", "output.uri": "writes its output to",
                 "selection.exclude": "reads the ledgers from"}


@dataclass(frozen=True)
class Submission:
    """A job handed to a cluster.

    Attributes:
        submission_id: Ray's name for the job (``ray job ...`` commands take it).
        address: the head's Jobs API (``http://HEAD:8265``).
        status: ``PENDING`` when not waited on; after a wait ``SUCCEEDED``, ``FAILED`` or
            ``STOPPED``.
        error: after a wait that did not succeed, the job's error: its last ``alray: error:``
            line (without the prefix), else Ray's status message.
        logs: after a wait, the job's whole log; else None.
        shipped: the working directory's files (relative path -> bytes).
        working_dir: the staging folder, when the caller asked to keep it; else None (removed
            once uploaded).
    """

    submission_id: str
    address: str
    status: str
    shipped: dict[str, int]
    error: str | None = None
    logs: str | None = None
    working_dir: str | None = None
    entrypoint: str = ENTRYPOINT
    runtime_env: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    @property
    def follow_command(self) -> str:
        return f"ray job logs --address {self.address} --follow {self.submission_id}"

    @property
    def stop_command(self) -> str:
        return f"ray job stop --address {self.address} {self.submission_id}"

    def notice(self) -> str:
        """What a user reads once the job is submitted: its id and how to follow and stop it."""
        return (f"alray: submitted {self.submission_id} to {self.address} (shipped "
                f"{_shipped_summary(self.shipped)})\n"
                f"alray: follow: {self.follow_command}\n"
                f"alray: stop:   {self.stop_command}\n")


def submit(spec_path: str | os.PathLike, address: str, *,
           overrides: Mapping[str, Any] | None = None, out: str | None = None,
           fresh: bool = False, wait: bool = False, pip: bool = False, shared_paths: bool = False,
           timeout: float = 60.0, echo: TextIO | None = None,
           staging_dir: str | os.PathLike | None = None,
           max_shipped_bytes: int = MAX_SHIPPED_BYTES) -> Submission:
    """Submit the job ``spec_path`` describes to the Ray cluster whose head answers at ``address``.

    Args:
        spec_path: the job spec (YAML).
        address: the head's dashboard, ``http://HEAD:8265`` (no scheme reads as http).
        overrides: dotted keys to set, as ``--set`` does (values already parsed).
        out: replaces ``output.uri``, as ``--out`` does.
        fresh: the job ignores earlier outputs at ``output.uri`` (``alray run --fresh``).
        wait: follow the job to its end, streaming its logs to ``echo``.
        pip: ship this alray's code and have Ray pip-install its dependencies (see the module's
            docstring), for a cluster without alray.
        shared_paths: local paths in the spec are on storage every node mounts at the same path;
            use them as given (by default only a head on this machine may use local paths).
        timeout: while waiting, how long the head may go without answering before the wait ends
            (the job goes on).
        echo: where the submission's notice and, with ``wait``, the job's logs are written
            (None: nowhere).
        staging_dir: build the working directory here (a new or empty folder) and keep it.
        max_shipped_bytes: the most the working directory may hold.

    Raises:
        ConfigError: the spec, a path in it, or ``address`` is wrong; nothing was submitted.
        ModelError: a local linear head is unreadable; nothing was submitted.
        JobFailed: the head stopped answering while the job was followed.
    """
    url, local_head = _address(address)
    spec = JobSpec.from_yaml(spec_path, overrides=overrides, out=out)
    _check_locations(spec, allowed=local_head or shared_paths)
    raw = _as_given(spec_path, overrides, spec)
    return _submit(spec, raw, url, entrypoint=ENTRYPOINT + (" --fresh" if fresh else ""),
                   wait=wait, pip=pip, timeout=timeout, echo=echo, staging_dir=staging_dir,
                   max_shipped_bytes=max_shipped_bytes)


def _submit(spec: JobSpec, raw: dict[str, Any], url: str, *, entrypoint: str, wait: bool,
            pip: bool, timeout: float, echo: TextIO | None, staging_dir,
            max_shipped_bytes: int) -> Submission:
    """Stage the working dir, hand it to the head, and with ``wait`` follow the job."""
    from alray.runtime import jobs  # imports Ray: only once the spec has passed its checks

    with jobs.quiet_ray_logs():
        staging, keep = _staging(staging_dir)
        try:
            shipped = _stage(spec, raw, staging, pip=pip, limit=max_shipped_bytes)
            runtime_env = _runtime_env(staging, spec, pip)
            client = jobs.connect(url)
            submission_id = jobs.new_id(spec.name)
            jobs.submit_job(client, submission_id, entrypoint, runtime_env, spec.name)
        finally:
            if not keep:
                shutil.rmtree(staging, ignore_errors=True)
        submission = Submission(submission_id, url, "PENDING", shipped,
                                working_dir=str(staging) if keep else None,
                                entrypoint=entrypoint, runtime_env=runtime_env)
        if echo is not None:
            echo.write(submission.notice())
            echo.flush()
        if not wait:
            return submission
        status, logs, error = jobs.follow(client, submission, echo, timeout)
        return dataclasses.replace(submission, status=status, error=error, logs=logs)


def _shipped_summary(shipped: Mapping[str, int]) -> str:
    """``job.yaml, model-files/head.safetensors, alray/ (87 files): 1.2 MiB``."""
    groups: dict[str, list[str]] = {}
    for path in shipped:
        groups.setdefault(path.split("/", 1)[0], []).append(path)
    parts = [paths[0] if len(paths) == 1 else f"{top}/ ({len(paths)} files)"
             for top, paths in groups.items()]
    return f"{', '.join(parts)}: {_size(sum(shipped.values()))}"


# ----------------------------------------------------------------------------- checks


def _address(address: str) -> tuple[str, bool]:
    """``(http(s)://host:port, whether the host is this machine)``."""
    text = str(address).strip().rstrip("/")
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("--address", f"got {address!r}; alray submit talks to the head's "
                                       "dashboard (Ray's Jobs API): give http://HEAD:8265")
    host = parts.hostname
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host == "localhost"
    return text, local


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def _check_locations(spec: JobSpec, allowed: bool) -> None:
    """Refuse paths the cluster cannot read: process memory always, local paths unless
    ``allowed`` (a head on this machine, or storage every node mounts)."""
    for key, uris in (("pool.uri", spec.pool.uri), ("output.uri", (spec.output.uri,)),
                      ("selection.exclude", spec.selection.exclude)):
        for uri in uris:
            scheme = _scheme(uri)
            if scheme == "memory":
                raise ConfigError(key, f"{uri} lives in this process's memory; the job runs in "
                                       "another process on the cluster: give a URI the cluster "
                                       "can read (s3://...)")
            if scheme in _LOCAL_SCHEMES and not allowed:
                raise ConfigError(key, f"{uri} is a local path; a cluster {_WHAT_IS_READ[key]} "
                                       "shared storage: give a URI the cluster can read "
                                       "(s3://...), or submit with --shared-paths if every node "
                                       "mounts this path")


# ----------------------------------------------------------------------------- the working dir


def _staging(staging_dir) -> tuple[Path, bool]:
    if staging_dir is None:
        return Path(tempfile.mkdtemp(prefix="alray-submit-")), False
    path = Path(staging_dir)
    if path.exists() and any(path.iterdir()):
        raise ConfigError("staging_dir", f"{path} is not empty; give a new or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    return path, True


def _local_file(uri: str) -> str | None:
    """The local path a model source names, or None for a URI the cluster reads itself."""
    scheme = _scheme(uri)
    if scheme == "":
        return uri
    return urlsplit(uri).path if scheme in ("file", "local") else None


def _as_given(spec_path, overrides: Mapping[str, Any] | None, spec: JobSpec) -> dict[str, Any]:
    """The spec as the user wrote it, ``--set`` applied, with the validated (resolved) paths: only
    the keys given, so that an alray on the cluster that lacks a newer key's default still reads
    it."""
    raw = apply_overrides(read_yaml(spec_path, "job spec"), overrides or {})
    raw["name"] = spec.name
    raw["pool"]["uri"] = list(spec.pool.uri)
    raw["output"]["uri"] = spec.output.uri
    if spec.selection.exclude:
        raw["selection"]["exclude"] = list(spec.selection.exclude)
    return raw


def _model_files(spec: JobSpec, raw: dict[str, Any]) -> list[tuple[str, Path, str]]:
    """Rename the local model files in ``raw`` into the working dir; ``(key, source,
    destination)`` for each file to copy."""
    model = spec.model
    copies: list[tuple[str, Path, str]] = []
    if model.kind in ("linear", "torchscript"):
        def place(source: str, folder: str, key: str) -> str:
            local = _local_file(source)
            if local is None:
                return source
            path = Path(local)
            if not path.is_file():
                raise ConfigError(key, f"no file at {source!r}; give the path of the "
                                       f"{model.kind} model's weights")
            copies.append((key, path, f"{folder}/{path.name}"))
            return f"{folder}/{path.name}"

        if model.members:
            raw["model"]["members"] = [place(s, f"{FILES_FOLDER}/{i}", "model.members")
                                       for i, s in enumerate(model.members)]
        elif model.path is not None:
            raw["model"]["path"] = place(model.path, FILES_FOLDER, "model.path")
    return copies


def _code_to_ship(spec: JobSpec) -> list[tuple[str, Path, str]]:
    """``(key, source, destination)`` for the local package of each ``python`` model or score."""
    named = []
    if spec.model.kind == "python":
        key = "model.members" if spec.model.members else "model.path"
        named += [(key, source) for source in spec.model.sources]
    if ":" in spec.scoring.strategy:
        named.append(("scoring.strategy", spec.scoring.strategy))
    found: dict[str, tuple[str, Path, str]] = {}
    for key, source in named:
        top = source.partition(":")[0].split(".")[0]
        if top == "alray":  # the cluster's own alray (or --pip's copy) has it
            continue
        for path in _local_code(top):
            found.setdefault(str(path), (key, path, top if path.is_dir() else path.name))
    return list(found.values())


def _installed_roots() -> list[Path]:
    paths = [*site.getsitepackages(), site.getusersitepackages()]
    paths += [sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib",
                                                       "platlib")]
    return [Path(p).resolve() for p in paths if p]


def _local_code(top: str) -> list[Path]:
    """The file or folder(s) of the top-level module ``top`` as ``alray run`` imports it (the
    current folder first on the path), unless installed or not found here: those are left to
    the cluster's Python."""
    found = find_module(top)
    if found is None:
        return []
    if found.submodule_search_locations:
        paths = [Path(p).resolve() for p in found.submodule_search_locations]
    elif found.origin and os.path.isfile(found.origin):
        paths = [Path(found.origin).resolve()]
    else:
        return []  # built into Python
    installed = _installed_roots()
    return [p for p in paths if not any(p.is_relative_to(root) for root in installed)]


_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".pytest_cache")


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _stage(spec: JobSpec, raw: dict[str, Any], staging: Path, *, pip: bool,
           limit: int) -> dict[str, int]:
    """Fill ``staging`` with job.yaml (``raw``, model paths rewritten) and the files it names;
    returns relative path -> bytes."""
    copies = _model_files(spec, raw)
    copies += _code_to_ship(spec)
    if pip:
        copies.append(("--pip", Path(__file__).resolve().parent, "alray"))
    total = 0
    for key, source, _ in copies:
        size = _tree_bytes(source)
        total += size
        if total > limit:
            raise ConfigError(key, f"{source} ({_size(size)}) brings the files to ship to "
                                   f"{_size(total)}, over the {_size(limit)} a submission "
                                   "ships in its working directory (Ray uploads it through "
                                   "the head); put the model on shared storage (s3://...) and "
                                   "name its URI")
    for _, source, destination in copies:
        target = staging / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=_IGNORE, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target)
    (staging / "job.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    _check_staged(spec, staging)
    return {str(p.relative_to(staging)): p.stat().st_size
            for p in sorted(staging.rglob("*")) if p.is_file()}


def _check_staged(spec: JobSpec, staging: Path) -> None:
    """The written spec reads back as the same job, and a shipped linear head is readable (a
    broken file found here costs no cluster time)."""
    staged = JobSpec.from_yaml(staging / "job.yaml")
    if staged.replace(model=spec.model).to_dict() != spec.to_dict():
        raise AssertionError("job.yaml does not read back as the validated spec")  # a bug here
    if staged.model.kind == "linear" and all(_local_file(s) for s in staged.model.sources):
        from alray.models.files import model_input_width

        model_input_width(staged.model)


def _requirements(spec: JobSpec) -> list[str]:
    """alray's own dependencies, for Ray's pip runtime environment: Ray excepted, the ``s3``
    extra's when the job reads or writes s3."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        declared = metadata.requires("alray") or []
    except metadata.PackageNotFoundError:
        raise ConfigError("--pip", "alray's package metadata is not installed here, so its "
                                   "dependencies are unknown; pip install alray (or -e .) "
                                   "first") from None
    data = spec.to_dict()
    uris = [*data["pool"]["uri"], data["output"]["uri"], *data["selection"]["exclude"],
            *(data["model"]["members"] or [data["model"]["path"] or ""])]
    extras = {"s3"} if any(_scheme(u) in ("s3", "s3a") for u in uris) else set()
    wanted = []
    for text in declared:
        requirement = Requirement(text)
        if requirement.name.lower() == "ray":
            continue
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in extras):
            requirement.marker = None
            wanted.append(str(requirement))
    return wanted


def _runtime_env(staging: Path, spec: JobSpec, pip: bool) -> dict[str, Any]:
    """The job's runtime environment: the working dir, unbuffered output, with ``pip`` the
    requirements Ray installs."""
    env: dict[str, Any] = {"working_dir": str(staging),
                           "env_vars": {"PYTHONUNBUFFERED": "1"}}
    if pip:
        env["pip"] = _requirements(spec)
    return env

