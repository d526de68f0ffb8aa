"""What each option of a job is, declared once on its config dataclass's field.

`option(default, help=..., label=..., ...)` is a `dataclasses.field` whose metadata holds an
`Option`: the help sentence, the windows' label, the valid choices, the command-line flag. The
CLI builds its argparse options from it (bone_apps/cli/options.py), the windows their labels and
lists, and a config error (errors.OptionError) names an option by its flag or its label from it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import MISSING, dataclass
from enum import Enum
from typing import Any

_KEY = "option"
_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")


@dataclass(frozen=True)
class Option:
    """The description of one config field as the front ends show it.

    Attributes:
        help: what the option does, one phrase without its default (the CLI adds it).
        label: the windows' name for it ("Normalization"), also used in their messages.
        flag: the command-line flag (default: "--" and the field's name with dashes).
        choices: the valid values, when they are a fixed list (an enum field's come from it).
        metavar: the word standing for the value in the CLI's usage.
        nargs: how many values the flag takes ("+" for one or more, 2 for a pair).
        default_text: how the default reads when its value alone does not say it ("one per
            core" for None); "" shows no default (the help says it).
        resumable: may change when a run is resumed (it does not change the numbers).
        where: where the label stands in the window, when the label alone is ambiguous
            ("Initial weights" for "Start from").
    """

    help: str
    label: str = ""
    flag: str | None = None
    choices: tuple[str, ...] = ()
    metavar: str | tuple[str, ...] | None = None
    nargs: int | str | None = None
    default_text: str | None = None
    resumable: bool = False
    where: str = ""

    @property
    def in_words(self) -> str:
        """The option as a window's message names it: “Start from” (Initial weights)."""
        return f"\u201c{self.label}\u201d" + (f" ({self.where})" if self.where else "")


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **described: Any) -> Any:
    """A dataclass field with its `Option` (keyword arguments: Option's attributes)."""
    meta = {_KEY: Option(**described)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def not_an_option(default: Any = MISSING, *, default_factory: Any = MISSING, why: str) -> Any:
    """A dataclass field no front end sets directly (`why` says how it is set instead)."""
    meta = {_KEY: None, "why": why}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def described(config: type) -> dict[str, Option]:
    """Field name -> Option of `config`'s fields that are options, in declaration order,
    with each flag filled in (--name-with-dashes unless declared) and an enum field's choices."""
    result = {}
    for f in dataclasses.fields(config):
        meta = f.metadata.get(_KEY)
        if meta is None:
            continue
        flag = "--" + f.name.replace("_", "-") if meta.flag is None else meta.flag
        choices = meta.choices or _enum_choices(f.default)
        result[f.name] = dataclasses.replace(meta, flag=flag, choices=choices)
    return result


def not_options(config: type) -> dict[str, str]:
    """Field name -> why it is not an option, for `config`'s fields declared with not_an_option."""
    return {f.name: f.metadata["why"] for f in dataclasses.fields(config) if "why" in f.metadata}


def defaults(config: type) -> dict[str, Any]:
    """Field name -> default value of `config`'s fields that have one."""
    result = {}
    for f in dataclasses.fields(config):
        if f.default is not MISSING:
            result[f.name] = f.default
        elif f.default_factory is not MISSING:
            result[f.name] = f.default_factory()
    return result


def default_words(config: type, name: str) -> str:
    """How `name`'s default reads in a help text or a tooltip ("256", "one per core"); "" when
    it has none to show (no default, None or empty)."""
    meta = described(config)[name]
    if meta.default_text is not None:
        return meta.default_text
    value = defaults(config).get(name)
    return "" if value is None or value == () else shown_value(value)


def shown_value(value: Any) -> str:
    """A value as an option's user types it: enums by value, booleans as on/off."""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _enum_choices(default: Any) -> tuple[str, ...]:
    return tuple(str(m.value) for m in type(default)) if isinstance(default, Enum) else ()


# How a config error names an option, by the error's class: configs register theirs.
_NAMES: dict[type, type] = {}


def names_options_of(error: type, config: type) -> None:
    """Declare that `error`'s messages name `config`'s options (as {field} placeholders)."""
    _NAMES[error] = config


def render(message: str, error: type, as_label: bool) -> str:
    """`message` with each {field} placeholder of a registered config written as that option's
    flag (the command line) or its label (`as_label`, the windows)."""
    config = next((c for e, c in _NAMES.items() if issubclass(error, e)), None)
    options = described(config) if config is not None else {}

    def name(match: re.Match) -> str:
        meta = options.get(match.group(1))
        if meta is None:
            return match.group(0)
        if as_label:
            return meta.in_words
        # A message names an option with its value ("--augment off"), so an off-switch flag
        # (--no-augment) is named by what it switches.
        return "--" + meta.flag[5:] if meta.flag.startswith("--no-") else meta.flag

    return _PLACEHOLDER.sub(name, message)
