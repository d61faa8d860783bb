"""The MUSHROOM_* environment variables of ../shared/CONTRACTS.md, read in one place."""

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class ConfigurationError(ValueError):
    """A MUSHROOM_* variable holds a value the pipeline cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None
    source_database_url: str | None
    timezone: str
    start_date: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def load_settings() -> Settings:
    timezone = _env("MUSHROOM_TIMEZONE") or "UTC"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ConfigurationError(
            f"MUSHROOM_TIMEZONE={timezone!r} is not an IANA timezone (e.g. Asia/Shanghai)"
        ) from err
    start_date = _env("MUSHROOM_START_DATE") or "2024-01-01"
    try:
        dt.date.fromisoformat(start_date)
    except ValueError as err:
        raise ConfigurationError(
            f"MUSHROOM_START_DATE={start_date!r} is not a date in the form YYYY-MM-DD"
        ) from err
    return Settings(
        home=Path(_env("MUSHROOM_HOME") or ".mushroom").absolute(),
        database_url=_env("MUSHROOM_DATABASE_URL"),
        source_database_url=_env("MUSHROOM_SOURCE_DATABASE_URL"),
        timezone=timezone,
        start_date=start_date,
    )
