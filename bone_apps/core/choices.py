"""Options with a fixed set of values: look one up by name, or say which names are valid."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from bone_apps.core.errors import BoneAppsError

E = TypeVar("E", bound=Enum)


class Choice(str, Enum):
    """An option with a fixed set of values. A member shows as its value ("2.5d"), the way the
    command line and the files spell it; `parse` finds one by name.

    A subclass names what it is and the error a wrong name raises:
    `class Dims(Choice, what="fitting mode", error=FitConfigError)`.
    """

    __str__ = str.__str__
    __format__ = str.__format__

    def __init_subclass__(cls, what: str = "option", error: type[BoneAppsError] = BoneAppsError,
                          **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._what, cls._error = what, error

    @classmethod
    def parse(cls, text: str | Choice, error: type[BoneAppsError] | None = None):
        """The member named `text`; `error` (the class's own by default) listing the valid names
        otherwise."""
        return parse_choice(cls, text, cls._what, error or cls._error)


def parse_choice(enum: type[E], text: str | E, what: str,
                 error: type[BoneAppsError] = BoneAppsError, field: str | None = None) -> E:
    """The member of `enum` whose value is `text` (any case, '_' read as '-').

    Args:
        field: the config field being parsed, passed to an OptionError (`what` is then
            "{field}", which the front end shows as the flag or the label).

    Raises:
        error: "<what> 'x' is unknown: use one of a, b, c."
    """
    if isinstance(text, enum):
        return text
    try:
        return enum(str(text).strip().lower().replace("_", "-"))
    except ValueError:
        valid = ", ".join(str(member.value) for member in enum)
        message = f"{what} {text!r} is unknown: use one of {valid}."
        raise (error(message) if field is None else error(message, field)) from None
