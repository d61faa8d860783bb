"""The farm's environment metrics (metrics.yaml, or MUSHROOM_METRIC_CATALOG): canonical names,
units, valid ranges and the names the source reports them under."""

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mushroom_pipeline.catalog.points import CatalogError, read_catalog_file

DEFAULT_METRICS = Path(__file__).with_name("metrics.yaml")
METRICS_VARIABLE = "MUSHROOM_METRIC_CATALOG"
# The staged form the SQL joins: one row per name a source may use.
NAME_TYPES = {"source_name": "text", "metric": "text", "low": "double precision",
              "high": "double precision"}


def name_key(name: str) -> str:
    """How a source name is matched: case-insensitive, blanks trimmed (as SQL lower(btrim()))."""
    return name.strip().lower()


@dataclass(frozen=True)
class Metric:
    name: str  # canonical: what the warehouse reports
    label: str
    unit: str
    low: float
    high: float
    aliases: tuple[str, ...] = ()
    resolution: float | None = None


@dataclass(frozen=True)
class MetricCatalog:
    metrics: tuple[Metric, ...]
    source: str

    def __post_init__(self):
        seen: dict[str, str] = {}
        for metric in self.metrics:
            for name in (metric.name, *metric.aliases):
                other = seen.setdefault(name_key(name), metric.name)
                if other != metric.name:
                    raise CatalogError(f"{self.source}: the name {name!r} belongs to {other} and {metric.name}")

    def get(self, name: str) -> Metric | None:
        """The metric a source name (canonical or alias) stands for."""
        key = name_key(name)
        return next((m for m in self.metrics if key in {name_key(n) for n in (m.name, *m.aliases)}), None)

    def canonical(self, name: str) -> str:
        metric = self.get(name)
        return metric.name if metric else name

    def names(self) -> pd.DataFrame:
        """Every name a source may use (NAME_TYPES), matched by name_key."""
        rows = [(name_key(n), m.name, m.low, m.high) for m in self.metrics for n in (m.name, *m.aliases)]
        return pd.DataFrame(rows, columns=list(NAME_TYPES))


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CatalogError(f"{where}: {value!r} is not a finite number")
    return float(value)


def _metric(name, raw, where: str) -> Metric:
    if not isinstance(name, str) or not name.strip() or not isinstance(raw, dict):
        raise CatalogError(f"{where}: a metric is `name: {{unit: …, range: [low, high], aliases: […]}}`")
    unknown = set(raw) - {"label", "unit", "range", "aliases", "resolution"}
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    bounds = raw.get("range")
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise CatalogError(f"{where}: range is [low, high]")
    low, high = (_number(b, f"{where}: range") for b in bounds)
    if low > high:
        raise CatalogError(f"{where}: range [{low}, {high}] is empty")
    aliases = raw.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise CatalogError(f"{where}: aliases is a list of names")
    resolution = raw.get("resolution")
    return Metric(
        name=name,
        label=str(raw.get("label") or name),
        unit=str(raw.get("unit") or ""),
        low=low,
        high=high,
        aliases=tuple(aliases),
        resolution=None if resolution is None else _number(resolution, f"{where}: resolution"),
    )


def load_metric_catalog(path: str | Path | None = None) -> MetricCatalog:
    """The file at `path` (the value of MUSHROOM_METRIC_CATALOG), else the shipped catalog."""
    path = Path(path or DEFAULT_METRICS)
    document = read_catalog_file(path, METRICS_VARIABLE) or {}
    metrics = document.get("metrics") if isinstance(document, dict) else None
    if not isinstance(metrics, dict):
        raise CatalogError(f"{METRICS_VARIABLE}: {path} has no `metrics:` mapping")
    return MetricCatalog(
        tuple(_metric(name, raw, f"{path}: metric {name}") for name, raw in metrics.items()),
        str(path),
    )
