"""The reference pages under docs/ agree with the code.

Pure Python and quick: no Ray starts. Each check reads a markdown table and compares it with the
code it documents, so a key, default, score, column or error kind added, removed or changed on one
side only fails here:

- docs/job-spec.md: the dotted keys and defaults of every spec section dataclass;
- docs/scores.md: the score names in ``alray.scoring.SCORES``;
- docs/outputs.md: the scores-file and selection columns, and ``ERROR_KINDS``.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = ROOT / "alray"

SPEC_COLUMNS = ["key", "type", "default", "meaning"]
REQUIRED = "required"


# ----------------------------------------------------------------------------------- markdown


@dataclass
class Table:
    """One markdown table: the heading it sits under, its header cells and its body rows."""

    heading: str
    header: list[str]
    rows: list[list[str]]

    def first_column(self) -> list[str]:
        """The body's first cells that are one backticked name, backticks removed, in order."""
        return [name for row in self.rows if (name := backticked(row[0])) is not None]


def backticked(cell: str) -> str | None:
    """``"`pool.uri`"`` -> ``"pool.uri"``; None for a cell that is not one code span."""
    match = re.fullmatch(r"`([^`]+)`", cell.strip())
    return match.group(1) if match else None


def _cells(line: str) -> list[str]:
    """The cells of a table line (``\\|`` is a pipe inside a cell)."""
    inner = line.strip()[1:]
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def _is_separator(cells: list[str]) -> bool:
    return all(re.fullmatch(r":?-+:?", cell) for cell in cells)


def _heading_text(line: str) -> str:
    return line.lstrip("#").strip().replace("`", "")


def tables(page: str) -> list[Table]:
    """Every table of ``docs/<page>``, outside fenced code blocks, with its nearest heading."""
    found: list[Table] = []
    heading, block, fenced = "", [], False
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines() + [""]
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.lstrip().startswith("|"):
            block.append(_cells(line))
            continue
        if block:
            rows = [cells for cells in block[1:] if not _is_separator(cells)]
            found.append(Table(heading, block[0], rows))
            block = []
        if not fenced and line.startswith("#"):
            heading = _heading_text(line)
    return found


def headings(page: str, under: str) -> list[str]:
    """The headings nested in the section titled ``under`` (backticks removed)."""
    found, level = [], None
    fenced = False
    for line in (DOCS / page).read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        depth = len(line) - len(line.lstrip("#"))
        if level is not None and depth <= level:
            level = None
        if level is not None:
            found.append(_heading_text(line))
        elif _heading_text(line) == under:
            level = depth
    return found


def table_under(page: str, heading: str, first_header: str) -> Table:
    """The table under ``heading`` whose first header cell is ``first_header``."""
    matches = [t for t in tables(page) if t.heading == heading and t.header[0] == first_header]
    assert len(matches) == 1, (f"docs/{page}: expected one table with a {first_header!r} column "
                               f"under the heading {heading!r}, found {len(matches)}")
    return matches[0]


# ----------------------------------------------------------------------------------- the code


def find_constant(*names: str):
    """The value of the module-level constant first defined as one of ``names`` in alray,
    wherever it lives now (it is found by its definition, then imported)."""
    for name in names:
        pattern = re.compile(rf"^{re.escape(name)}\s*(:[^=]+)?=", re.M)
        modules = sorted(
            ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for path in PACKAGE.rglob("*.py") if pattern.search(path.read_text(encoding="utf-8")))
        assert len(modules) <= 1, f"{name} is defined in several modules: {modules}"
        if modules:
            return getattr(importlib.import_module(modules[0]), name)
    raise AssertionError(f"none of {names} is defined at module level anywhere under alray/")


def _nested_section(hint) -> type | None:
    """The spec-section dataclass a field's type names (``ImageSpec | None`` -> ImageSpec)."""
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def spec_fields() -> dict[str, dataclasses.Field]:
    """Every dotted spec key -> its dataclass field: the sections of ``alray.config._SECTIONS``
    and the sections nested in them (``pool.image``, ``storage.s3``)."""
    from alray import config

    found: dict[str, dataclasses.Field] = {}

    def walk(prefix: str, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}"
            found[key] = f
            nested = _nested_section(hints[f.name])
            if nested is not None:
                walk(key, nested)

    for section, cls in config._SECTIONS.items():
        walk(section, cls)
    return found


def yaml_text(value) -> str:
    """A default as the docs write it: YAML-like, ``None`` -> ``null``, ``()`` -> ``[]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_text(v) for v in value) + "]"
    return str(value)


def code_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return yaml_text(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return yaml_text(f.default_factory())
    return REQUIRED


def documented_spec() -> dict[str, dict[str, str]]:
    """Each key documented in docs/job-spec.md -> its row, by column name."""
    rows: dict[str, dict[str, str]] = {}
    for table in tables("job-spec.md"):
        if table.header[0] != "key":
            continue
        assert table.header == SPEC_COLUMNS, (f"docs/job-spec.md, {table.heading!r}: columns "
                                              f"{table.header}, expected {SPEC_COLUMNS}")
        for row in table.rows:
            key = backticked(row[0])
            if key is None:
                continue
            assert key not in rows, f"docs/job-spec.md documents {key} twice"
            rows[key] = dict(zip(SPEC_COLUMNS, row))
    return rows


def documented_default(row: dict[str, str]) -> str:
    cell = row["default"].strip()
    return backticked(cell) or cell


# ----------------------------------------------------------------------------------- job spec


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_table_row_has_the_header_cell_count(page):
    for table in tables(page):
        bad = [row[0] for row in table.rows if len(row) != len(table.header)]
        assert not bad, (f"docs/{page}, table under {table.heading!r}: rows {bad} do not have "
                         f"{len(table.header)} cells (write a pipe inside a cell as \\|)")


def test_markdown_helpers_read_a_table_and_its_heading(tmp_path, monkeypatch):
    (tmp_path / "page.md").write_text(
        "# Top\n\n## `pool`\n\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n"
        "| `pool.uri` | string | required | a \\| b |\n| plain | x | y | z |\n\n"
        "```yaml\n| `not.a.row` |\n# not a heading\n```\n", encoding="utf-8")
    monkeypatch.setitem(globals(), "DOCS", tmp_path)
    (table,) = tables("page.md")
    assert headings("page.md", "Top") == ["pool"]
    assert table.heading == "pool"
    assert table.header == SPEC_COLUMNS
    assert table.rows[0] == ["`pool.uri`", "string", "required", "a | b"]
    assert table.first_column() == ["pool.uri"]


def test_every_spec_key_is_documented_and_every_documented_key_exists():
    expected = set(spec_fields()) | {"name"}
    documented = set(documented_spec())
    assert {"pool.image.mode", "storage.s3.endpoint_url"} <= expected, \
        "the walk over the spec dataclasses no longer reaches pool.image or storage.s3"
    missing, unknown = sorted(expected - documented), sorted(documented - expected)
    assert not missing, f"spec keys missing from docs/job-spec.md: {missing}"
    assert not unknown, f"docs/job-spec.md documents keys the code does not have: {unknown}"


def test_documented_defaults_match_the_dataclass_defaults():
    documented = documented_spec()
    wrong = {key: (documented_default(documented[key]), code_default(f))
             for key, f in spec_fields().items()
             if key in documented and documented_default(documented[key]) != code_default(f)}
    assert not wrong, ("docs/job-spec.md defaults differ from alray/config.py "
                       f"(key: (documented, code)): {wrong}")


def test_name_is_documented_as_optional():
    from alray.config import JobSpec

    spec = JobSpec.from_dict({"pool": {"uri": "pool", "feature_column": "x"},
                              "model": {"kind": "linear", "path": "head.npz"},
                              "selection": {"k": 1}, "output": {"uri": "out"}}, base_dir=ROOT)
    assert spec.name, "a spec without a name should get a default name"
    assert documented_default(documented_spec()["name"]) != REQUIRED, \
        "docs/job-spec.md says name is required, but a spec without one is valid"


def test_each_spec_table_documents_one_section():
    """A table holds the keys of one section (and may hold the section's own key, as the
    ``storage.s3`` table does)."""
    for table in tables("job-spec.md"):
        keys = table.first_column() if table.header[0] == "key" else []
        parents = Counter(key.rpartition(".")[0] for key in keys)
        section = parents.most_common(1)[0][0] if keys else ""
        strays = [key for key in keys if key.rpartition(".")[0] != section and key != section]
        assert not strays, f"docs/job-spec.md, table {table.heading!r} ({section}) holds {strays}"


@pytest.mark.parametrize("key, constant", [("scoring.strategy", "SCORE_NAMES"),
                                           ("selection.method", "METHOD_NAMES"),
                                           ("model.kind", "MODEL_KINDS"),
                                           ("pool.format", "POOL_FORMATS")])
def test_documented_choices_match_the_code(key, constant):
    choices = set(find_constant(constant))
    documented = set(re.findall(r"`([^`]+)`", documented_spec()[key]["type"]))
    assert documented == choices, f"docs/job-spec.md {key}: {sorted(documented)} != {sorted(choices)}"


# ----------------------------------------------------------------------------------- scores


def documented_strategies() -> set[str]:
    """Score names documented as strategies in docs/scores.md: the rows of its ``strategy``
    table, and the headings of its section "The scores"."""
    table = table_under("scores.md", "The scores", "strategy")
    names = set(table.first_column())
    assert len(names) == len(table.first_column()), "docs/scores.md lists a strategy twice"
    return names | set(headings("scores.md", "The scores"))


def test_every_score_is_documented_and_nothing_else_is():
    from alray.scoring import SCORES

    documented, code = documented_strategies(), set(SCORES)
    assert not code - documented, f"scores missing from docs/scores.md: {sorted(code - documented)}"
    assert not documented - code, (f"docs/scores.md documents strategies alray does not have: "
                                   f"{sorted(documented - code)}")


def test_every_selection_method_is_documented_and_nothing_else_is():
    from alray.selection.registry import METHODS

    documented = table_under("selection.md", "Methods", "method").first_column()
    assert sorted(documented) == sorted(METHODS), (f"docs/selection.md methods {documented} != "
                                                   f"{sorted(METHODS)}")


def test_the_ledger_columns_match_the_code():
    import pyarrow as pa

    from alray.ledger import _schema

    documented = table_under("selection.md", "Ledgers", "column").first_column()
    assert documented == _schema(pa.int64()).names


# ----------------------------------------------------------------------------------- outputs


def test_scores_file_columns_match_the_code():
    columns = find_constant("_SCORES_FILE_COLUMNS", "SCORES_FILE_COLUMNS")
    documented = table_under("outputs.md", "scores/<shard id>.parquet", "column").first_column()
    assert documented == list(columns), f"docs/outputs.md: {documented} != {list(columns)}"


def test_selection_columns_match_the_code():
    columns = find_constant("SELECTION_COLUMNS")
    documented = table_under("outputs.md", "selection.parquet", "column").first_column()
    assert documented == list(columns), f"docs/outputs.md: {documented} != {list(columns)}"


def test_error_kinds_match_the_code():
    kinds = set(find_constant("ERROR_KINDS"))
    listed = table_under("outputs.md", "Error kinds", "kind").first_column()
    assert len(listed) == len(set(listed)), "docs/outputs.md lists an error kind twice"
    missing, unknown = sorted(kinds - set(listed)), sorted(set(listed) - kinds)
    assert not missing, f"error kinds missing from docs/outputs.md: {missing}"
    assert not unknown, f"docs/outputs.md lists error kinds alray does not have: {unknown}"
