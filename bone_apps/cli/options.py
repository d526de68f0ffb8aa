"""argparse options generated from a config's field metadata (bone_apps.core.options)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bone_apps.core.options import default_words, described


def help_text(config: type, name: str) -> str:
    """The option's help sentence with its default, as `--help` shows it ("%" escaped)."""
    meta = described(config)[name]
    words = default_words(config, name)
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    text = meta.help
    if words and not _is_bool(field):
        # "schedule (cosine: one cycle)" -> "schedule (cosine: one cycle; default cosine)"
        if text.endswith(")") and text.rfind("(") > text.rfind("["):
            text = f"{text[:-1]}; default {words})"
        else:
            text = f"{text} (default {words})"
    return text.replace("%", "%%")


def add_option(group: Any, config: type, name: str, **overrides: Any) -> None:
    """Add the flag of `config`'s field `name` to `group` (a parser or an argument group):
    flag, help with the default, choices, metavar and value type from the field's metadata.
    `overrides` are argparse keyword arguments the command sets itself (e.g. its default)."""
    meta = described(config)[name]
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    kwargs: dict[str, Any] = {"dest": name, "help": help_text(config, name)}
    if _is_bool(field):
        kwargs["action"] = "store_false" if meta.flag.startswith("--no-") else "store_true"
    else:
        kwargs["type"] = _value_type(field)
        if meta.choices:
            kwargs["choices"] = list(meta.choices)
        if meta.metavar is not None:
            kwargs["metavar"] = meta.metavar
        if meta.nargs is not None:
            kwargs["nargs"] = meta.nargs
    kwargs.update(overrides)
    group.add_argument(meta.flag, **kwargs)


def _is_bool(field: dataclasses.Field) -> bool:
    return str(field.type) == "bool"


def _value_type(field: dataclasses.Field) -> type:
    """int, float, Path or str, from the field's annotation (a string: annotations are postponed)."""
    annotation = str(field.type)
    for word, kind in (("float", float), ("int", int), ("Path", Path)):
        if annotation.split(" | ")[0].strip("()").startswith(word):
            return kind
    return str

