"""The README's configuration reference, rendered from the settings models themselves.

One row per setting: its key in the settings file, its environment variable, its type and
default (read from the pydantic model) and what it means: the docstring written under the
field in :mod:`yibu_middleware.settings` (its ``description=`` when it has none). The README
holds the rendered table between two marker comments; ``scripts/config-reference`` rewrites
it, and ``scripts/config-reference --check`` (run by the test suite, hence by CI) fails when
the README and the settings disagree, so the reference cannot drift from the code.

Attribute docstrings are not kept by Python at run time, so they are read from the settings
module's source with :mod:`ast`. Nothing at start-up imports this module.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import NoDecode

from . import settings as settings_module
from .settings import CONFIG_ENV, ENV_PREFIX, RouteSpec, Settings

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
REGENERATE = "scripts/config-reference"
HEADER = ("setting", "environment", "type", "default", "meaning")


@dataclass(frozen=True)
class Row:
    setting: str  # the dotted key in the settings file; "—" for a variable that is not a setting
    environment: str
    type: str
    default: str
    meaning: str

    def cells(self) -> tuple[str, ...]:
        return (self.setting, self.environment, self.type, self.default, self.meaning)


# --- what each setting means: the docstrings under the fields ---------------------------------


def attribute_docs(source: str) -> dict[tuple[str, str], str]:
    """Docstrings written under assignments: ``(class name, field)`` -> text; ``("", name)``
    for a module-level constant. Each is flattened to one line, as a table cell needs."""
    docs: dict[tuple[str, str], str] = {}

    def scan(owner: str, body: list[ast.stmt]) -> None:
        for statement, following in pairwise(body):
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                name = statement.target.id
            elif (
                isinstance(statement, ast.Assign)
                and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)
            ):
                name = statement.targets[0].id
            else:
                continue
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[owner, name] = " ".join(following.value.value.split())

    tree = ast.parse(source)
    scan("", tree.body)
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            scan(node.name, node.body)
    return docs


def settings_source() -> str:
    return inspect.getsource(settings_module)


# --- the rows --------------------------------------------------------------------------------


def _section_model(info: FieldInfo) -> type[BaseModel] | None:
    """The model of a nested section (``retry``, ``limits``...), whose fields get rows of their own."""
    annotation = info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _meaning(model: type[BaseModel], name: str, info: FieldInfo, docs: Mapping[tuple[str, str], str]) -> str:
    for owner in model.__mro__:  # a field inherited from a parent model has its docstring there
        text = docs.get((owner.__name__, name))
        if text:
            return text
    description = info.description or ""
    return description[:1].upper() + description[1:] + ("" if description.endswith(".") else ".")


def _leaves(
    model: type[BaseModel], path: tuple[str, ...], docs: Mapping[tuple[str, str], str], about: str = ""
) -> Iterator[Row]:
    """``about``: what the section is, for a section of one field (a switch such as
    ``hooks.requests.enabled``), whose field's own text is the same in every such section."""
    for name, info in model.model_fields.items():
        section = _section_model(info)
        if section is not None:
            one_field = len(section.model_fields) == 1
            yield from _leaves(section, (*path, name), docs, _meaning(model, name, info, docs) if one_field else "")
            continue
        dotted = (*path, name)
        meaning = _meaning(model, name, info, docs)
        yield Row(
            setting=f"`{'.'.join(dotted)}`",
            environment=f"`{ENV_PREFIX}{'__'.join(dotted).upper()}`" + _environment_form(info),
            type=_type_text(info),
            default=_default_text(info.default),
            meaning=f"{about} {meaning}" if about else meaning,
        )


def reference_rows(source: str | None = None) -> list[Row]:
    """Every setting, in the order the models declare them, then ``YIBU_CONFIG``."""
    docs = attribute_docs(source if source is not None else settings_source())
    rows = list(_leaves(Settings, (), docs))
    config_doc = docs.get(("", "CONFIG_ENV"), "")
    rows.append(Row("—", f"`{CONFIG_ENV}`", "path", "unset", config_doc))
    return rows


# --- how types and defaults are shown --------------------------------------------------------


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(others) == 1:
            return others[0]
    return annotation


def _environment_form(info: FieldInfo) -> str:
    """How a list or table is written in an environment variable (a scalar is its plain text)."""
    origin = typing.get_origin(_strip_optional(info.annotation))
    if origin is dict:
        return " (JSON object)"
    if origin is list:
        # NoDecode: the settings' own validator splits on commas and takes JSON too.
        return " (comma-separated or JSON list)" if NoDecode in info.metadata else " (JSON list)"
    return ""


def _plain_type(annotation: Any) -> str:
    annotation = _strip_optional(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        if typing.get_origin(item) is Literal:
            return "list of " + ", ".join(f"`{value}`" for value in typing.get_args(item))
        if item is SecretStr:
            return "list of strings (secrets)"
        return f"list of {_plain_type(item)}s"
    if origin is dict:
        return "table"
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        SecretStr: "string (secret)",
        Path: "path",
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _type_text(info: FieldInfo) -> str:
    text = _plain_type(info.annotation)
    bounds = {type(item): item for item in info.metadata}
    low = bounds.get(annotated_types.Ge) or bounds.get(annotated_types.Gt)
    high = bounds.get(annotated_types.Le) or bounds.get(annotated_types.Lt)
    if isinstance(low, annotated_types.Ge) and isinstance(high, annotated_types.Le):
        return f"{text}, {_number(low.ge)} to {_number(high.le)}"
    limits = []
    if isinstance(low, annotated_types.Ge):
        limits.append(f">= {_number(low.ge)}")
    elif isinstance(low, annotated_types.Gt):
        limits.append(f"> {_number(low.gt)}")
    if isinstance(high, annotated_types.Le):
        limits.append(f"<= {_number(high.le)}")
    elif isinstance(high, annotated_types.Lt):
        limits.append(f"< {_number(high.lt)}")
    return f"{text} {', '.join(limits)}" if limits else text


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"`{_number(value)}`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, Sequence):
        return f"`{', '.join(map(str, value))}`" if value else "empty"
    if isinstance(value, Mapping):
        if not value:
            return "empty"
        shown = (f"`{key}` = {item.provider if isinstance(item, RouteSpec) else item}" for key, item in value.items())
        return ", ".join(shown)
    return f"`{value}`"


# --- the Markdown -----------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a pipe, even inside a code span, would end the cell


def render_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def render_block(rows: Sequence[Row]) -> str:
    """What stands between the markers, markers included."""
    note = (
        "<!-- Generated from yibu_middleware/settings.py by scripts/config-reference: edit a setting's"
        " docstring there, not this table. -->"
    )
    return f"{START}\n{note}\n\n{render_table(rows)}\n\n{END}"


class MarkersMissing(ValueError):
    pass


def _split(readme: str) -> tuple[str, str, str]:
    """(before, the block with its markers, after)."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start or readme.count(START) != 1 or readme.count(END) != 1:
        raise MarkersMissing(
            f"the README must hold the configuration table once, between a line {START} and a line {END}"
        )
    end += len(END)
    return readme[:start], readme[start:end], readme[end:]


def updated_readme(readme: str, rows: Sequence[Row]) -> str:
    before, _, after = _split(readme)
    return before + render_block(rows) + after


def _table_rows(block: str) -> dict[str, str]:
    """The README's table rows, by their first cell (the setting or, for YIBU_CONFIG, the variable)."""
    found: dict[str, str] = {}
    for line in block.splitlines():
        if not line.startswith("| ") or line.startswith("| setting |"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        key = cells[0] if cells[0] != "—" else cells[1]
        found[key] = line
    return found


def differences(readme: str, rows: Sequence[Row]) -> list[str]:
    """What differs between the README's table and the settings, one line (or three) each."""
    try:
        _, block, _ = _split(readme)
    except MarkersMissing as exc:
        return [str(exc)]
    if block == render_block(rows):
        return []
    have = _table_rows(block)
    want = _table_rows(render_block(rows))
    problems = []
    for key, line in want.items():
        if key not in have:
            problems.append(f"- {key}: in the settings, missing from the README")
        elif have[key] != line:
            problems.append(f"- {key} differs:\n    README:   {have[key]}\n    settings: {line}")
    problems += [f"- {key}: in the README, not a setting" for key in have if key not in want]
    if not problems:
        problems.append("- the rows match, but the text around them between the markers differs (or their order)")
    return problems


def main(argv: Sequence[str] | None = None, *, default_readme: Path = Path("README.md")) -> int:
    parser = argparse.ArgumentParser(
        prog=REGENERATE,
        description="Render the README's configuration reference from yibu_middleware/settings.py.",
    )
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the README is out of date")
    parser.add_argument(
        "--readme", type=Path, default=default_readme, help=f"the README to update or check ({default_readme})"
    )
    args = parser.parse_args(argv)
    try:
        readme = args.readme.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"{REGENERATE}: cannot read {args.readme}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    rows = reference_rows()
    if args.check:
        problems = differences(readme, rows)
        if problems:
            print(
                f"{args.readme}: the configuration reference does not match yibu_middleware/settings.py:\n"
                + "\n".join(problems)
                + f"\nTo change what a setting says, edit its docstring in yibu_middleware/settings.py; then run"
                f" {REGENERATE} to rewrite the README's table, and commit both.",
                file=sys.stderr,
            )
            return 1
        print(f"{args.readme}: the configuration reference matches the settings ({len(rows)} rows).")
        return 0
    try:
        new = updated_readme(readme, rows)
    except MarkersMissing as exc:
        print(f"{REGENERATE}: {args.readme}: {exc}", file=sys.stderr)
        return 2
    if new != readme:
        args.readme.write_text(new, encoding="utf-8")
        print(f"{args.readme}: configuration reference rewritten ({len(rows)} rows).")
    else:
        print(f"{args.readme}: configuration reference already up to date.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
