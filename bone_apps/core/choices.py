"""Options with a fixed set of values: look one up by name, or say which names are valid."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from bone_apps.core.errors import BoneAppsError

E = TypeVar("E", bound=Enum)


def parse_choice(enum: type[E], text: str | E, what: str,
                 error: type[BoneAppsError] = BoneAppsError) -> E:
    """The member of `enum` whose value is `text` (any case, '_' read as '-').

    Raises:
        error: "<what> 'x' is unknown: use one of a, b, c."
    """
    if isinstance(text, enum):
        return text
    try:
        return enum(str(text).strip().lower().replace("_", "-"))
    except ValueError:
        valid = ", ".join(str(member.value) for member in enum)
        raise error(f"{what} {text!r} is unknown: use one of {valid}.") from None
