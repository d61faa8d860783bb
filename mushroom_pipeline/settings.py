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


# The variables that give stored data its meaning: a demo made with them is read back with them.
PERSISTED_CHOICES = (
    "MUSHROOM_TIMEZONE",
    "MUSHROOM_START_DATE",
    "MUSHROOM_IMAGE_BUCKET",
    "MUSHROOM_CLIP_MODEL",
    "MUSHROOM_CLIP_PRETRAINED",
)
CHOICES_FILE = "mushroom.env"


def choices_file(home: Path) -> Path:
    return Path(home).absolute() / CHOICES_FILE


def persist_choices(home: Path) -> Path:
    """Writes the PERSISTED_CHOICES in effect to `$MUSHROOM_HOME/mushroom.env`, so that every
    later process on this home (`make ui`, its daemon and run workers, the CLI) reads the data
    as it was made: above all the demo's CLIP weights. Never URLs or credentials."""
    path = choices_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{name}={os.environ[name].strip()}" for name in PERSISTED_CHOICES if _env(name)]
    path.write_text("# choices made for this MUSHROOM_HOME (by `mushroom-pipeline demo`); a "
                    "variable set in the environment wins\n" + "".join(f"{l}\n" for l in lines))
    return path


def apply_persisted_choices(home: Path) -> dict[str, str]:
    """Sets the variables of `$MUSHROOM_HOME/mushroom.env` that the environment leaves unset;
    returns those it set."""
    path = choices_file(home)
    applied = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name, _, value = line.partition("=")
            name = name.strip()
            if name in PERSISTED_CHOICES and value.strip() and _env(name) is None:
                applied[name] = os.environ[name] = value.strip()
    return applied


def farm_calendar() -> tuple[str, str]:
    """(timezone, first day) of the farm's daily partitions, checked: MUSHROOM_TIMEZONE and
    MUSHROOM_START_DATE, or the home's persisted choices, or the defaults."""
    apply_persisted_choices(Path(_env("MUSHROOM_HOME") or ".mushroom"))
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
    return timezone, start_date


def load_settings() -> Settings:
    timezone, start_date = farm_calendar()
    return Settings(
        home=Path(_env("MUSHROOM_HOME") or ".mushroom").absolute(),
        database_url=_env("MUSHROOM_DATABASE_URL"),
        source_database_url=_env("MUSHROOM_SOURCE_DATABASE_URL"),
        timezone=timezone,
        start_date=start_date,
    )
