"""Remembered folders and options between sessions (QSettings, per user)."""

from __future__ import annotations

from PySide6.QtCore import QSettings

ORGANIZATION = "bone_apps"


class AppSettings:
    """Small typed wrapper around QSettings for one app."""

    def __init__(self, app_name: str) -> None:
        self._settings = QSettings(ORGANIZATION, app_name)

    def get(self, key: str, default: str = "") -> str:
        value = self._settings.value(key, default)
        return default if value is None else str(value)

    def set(self, key: str, value: str) -> None:
        self._settings.setValue(key, value)
        self._settings.sync()
