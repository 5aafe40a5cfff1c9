"""The ten DESED / DCASE 2020 task 4 sound event classes, in the order used for every label vector."""

from __future__ import annotations

DESED_CLASSES: tuple[str, ...] = (
    "Alarm_bell_ringing",
    "Blender",
    "Cat",
    "Dishes",
    "Dog",
    "Electric_shaver_toothbrush",
    "Frying",
    "Running_water",
    "Speech",
    "Vacuum_cleaner",
)


class UnknownClassError(ValueError):
    """A label that is not one of the configured classes."""


def class_index(label: str, classes: tuple[str, ...] = DESED_CLASSES) -> int:
    try:
        return classes.index(label)
    except ValueError:
        raise UnknownClassError(f"unknown class {label!r}; expected one of {', '.join(classes)}") from None
