"""The reference tables, generated from the code: committed in the pages, refreshed by the site.

A page asks for a table with an HTML comment on a line of its own, and the table follows it up
to ``<!-- /carinspect -->``:

- ``<!-- carinspect:params train -->``: the keys of a params.yaml section (from ``Params``)
- ``<!-- carinspect:settings serve -->`` / ``settings pipeline``: environment settings
- ``<!-- carinspect:cli -->``: every command of the ``carinspect`` CLI with its options

The typed models and the Typer app are the source of truth; nothing here is written by hand, so
the docs cannot disagree with ``carinspect --help`` or with what params.yaml accepts. The tables
are committed so that the pages read whole on GitHub too: ``python docs/hooks.py`` rewrites them
(tests/docs/test_reference.py fails while a committed table is stale), and the mkdocs hook
(``on_page_markdown``) renders them afresh when the site is built.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

MARKER = re.compile(
    r"^(<!-- carinspect:(params|settings|cli)\s*([\w.]*)\s*-->)\n(?:.*?^<!-- /carinspect -->$|)",
    re.MULTILINE | re.DOTALL,
)
END = "<!-- /carinspect -->"


def _type_name(annotation: Any) -> str:
    """``int``, ``float | null``, ``clean | dirty``, ``list[float]``: as a params.yaml user reads it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is SecretStr:
        return "secret"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def _bounds(info: FieldInfo) -> str:
    """``>= 1, <= 64``: the constraints pydantic enforces on a field."""
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "length >="}
    found = []
    for item in info.metadata:
        for attr, word in words.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{word} {value}")
    return ", ".join(found)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "(required)"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, SecretStr):
        return "(empty)" if not value.get_secret_value() else "(set)"
    if value is None:
        return "`null`"
    text = repr(value) if not isinstance(value, str) else value
    if isinstance(value, bool):
        text = str(value).lower()
    if len(text) > 60:
        return "(see params.yaml)"
    return f"`{text}`" if text else '`""`'


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        nested = _model_of(info.annotation)
        if nested is not None:
            rows.extend(_rows(nested, f"{key}."))
            continue
        rows.append(
            f"| `{key}` | {_type_name(info.annotation)} | {_default(info)} | "
            f"{_cell(_bounds(info))} | {_cell(info.description or '')} |"
        )
    return rows


def params_table(section: str) -> str:
    """The keys of one params.yaml section, with type, default, bounds and meaning."""
    from carinspect.config import Params

    fields = {info.alias or name: info for name, info in Params.model_fields.items()}
    if section not in fields:
        raise ValueError(f"params section {section!r} is not one of {sorted(fields)}")
    model = _model_of(fields[section].annotation)
    assert model is not None, section
    doc = inspect.cleandoc(model.__doc__ or "")
    head = (
        f"Section `{section}` of params.yaml (`{model.__name__}`). {doc}\n\n"
        "The default is what applies when params.yaml leaves a key out; a misspelt or unknown "
        "key fails at load, naming it.\n\n"
    )
    header = ["| key | type | default | bounds | meaning |", "| --- | --- | --- | --- | --- |"]
    return head + "\n".join([*header, *_rows(model, f"{section}.")])


def _settings_model(which: str) -> type[BaseModel]:
    if which == "serve":
        from carinspect.serving.settings import ServeSettings

        return ServeSettings
    if which == "pipeline":
        from carinspect.config import Settings

        return Settings
    raise ValueError(f"settings {which!r}: expected serve or pipeline")


def settings_table(which: str) -> str:
    """Environment variables a settings model reads, with type, default, bounds and meaning."""
    model = _settings_model(which)
    rows = []
    for name, info in model.model_fields.items():
        env = info.validation_alias if isinstance(info.validation_alias, str) else name.upper()
        rows.append(
            f"| `{env}` | {_type_name(info.annotation)} | {_default(info)} | "
            f"{_cell(_bounds(info))} | {_cell(info.description or '')} |"
        )
    header = ["| variable | type | default | bounds | meaning |", "| --- | --- | --- | --- | --- |"]
    return "\n".join([*header, *rows])


def _commands(group: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    """(words, command) for a command and, for a group, every command under it.

    Typer vendors its own click, so its classes are recognised by what they have, not imported.
    """
    found = [(path, group)]
    if hasattr(group, "list_commands"):
        ctx = group.make_context(path[-1], [], resilient_parsing=True)
        for name in group.list_commands(ctx):
            sub = group.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                found.extend(_commands(sub, [*path, name]))
    return found


def _param_row(param: Any) -> str:
    if param.param_type_name == "option":
        names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
        default = param.default if not callable(param.default) else None
        shown = "" if default in (None, False, ()) or param.is_flag else f"`{default}`"
        return f"| {names} | {shown} | {_cell(param.help or '')} |"
    return f"| `{param.name.upper()}` (argument) | | {_cell(getattr(param, 'help', None) or '')} |"


def cli_reference() -> str:
    """Every ``carinspect`` command: its help text and its options, from the Typer app."""
    import typer

    from carinspect.cli import app

    root = typer.main.get_command(app)
    parts = []
    for path, command in _commands(root, ["carinspect"]):
        params = [p for p in command.params if p.name != "help"]
        parts.append(f"### `{' '.join(path)}`\n")
        parts.append(_cell((command.help or "").split("\n\n")[0]) + "\n")
        if params:
            parts.append("| option | default | meaning |\n| --- | --- | --- |")
            parts.append("\n".join(_param_row(p) for p in params) + "\n")
    return "\n".join(parts)


def render(kind: str, arg: str) -> str:
    """The markdown a marker stands for."""
    if kind == "params":
        return params_table(arg)
    if kind == "settings":
        return settings_table(arg)
    return cli_reference()


def refreshed(markdown: str) -> str:
    """``markdown`` with each marker followed by its table as the code has it now."""
    return MARKER.sub(
        lambda m: f"{m.group(1)}\n{render(m.group(2), m.group(3))}\n\n{END}", markdown
    )


def on_page_markdown(markdown: str, **_: Any) -> str:
    """The page with fresh tables (the mkdocs ``on_page_markdown`` event)."""
    return refreshed(markdown)


def main() -> None:
    """Rewrite every docs page's tables in place (``python docs/hooks.py``)."""
    from pathlib import Path

    for page in sorted(Path(__file__).parent.rglob("*.md")):
        text = page.read_text()
        new = refreshed(text)
        if new != text:
            page.write_text(new)


if __name__ == "__main__":
    main()
