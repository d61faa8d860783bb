"""The farm's device points (points.yaml, or MUSHROOM_SETPOINT_CONFIG): how each point is read,
which device reports the room's batch, and which setpoint governs which metric."""

import fnmatch
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mushroom_pipeline.settings import ConfigurationError

DEFAULT_POINTS = Path(__file__).with_name("points.yaml")
POINTS_VARIABLE = "MUSHROOM_SETPOINT_CONFIG"
KINDS = ("switch", "enum", "analog")
BATCH_KIND = "batch"  # a point of the batch device: read by room_batches, never a change event
SWITCH_LABELS = {0.0: "off", 1.0: "on"}  # the contract's switch, when no rule names its values


class CatalogError(ConfigurationError):
    """A catalog file is unreadable or wrong; the message names the file and its variable."""


# libyaml's parser where PyYAML was built with it: the same documents as SafeLoader, read
# about 10× faster (each run and sensor tick reads the catalog; benchmarks/README.md, hourly ticks)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def catalog_text(path: Path, variable: str) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise CatalogError(f"{variable}: cannot read {path}: {err}") from err


def parse_catalog(text: str, path: Path, variable: str) -> object:
    """The YAML document of a catalog file's `text` (None when empty); unreadable: a
    CatalogError naming the file and the variable that chose it."""
    try:
        return yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as err:
        raise CatalogError(f"{variable}: cannot read {path}: {err}") from err


def read_catalog_file(path: Path, variable: str) -> object:
    return parse_catalog(catalog_text(path, variable), path, variable)


def is_switch_name(point: str) -> bool:
    """The contract: a point named `on_off` or ending in `_on_off` is a switch (0/1)."""
    return point == "on_off" or point.endswith("_on_off")


def _glob(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise CatalogError(f"{where}: {value!r} is not a name or glob (quote names such as \"on\")")
    return value


@dataclass(frozen=True)
class PointRule:
    point: str = "*"
    device: str = "*"
    room: str = "*"
    kind: str | None = None
    deadband: float = 0.0
    exclude: bool = False
    labels: dict[float, str] = field(default_factory=dict)
    unit: str | None = None
    meaning: str | None = None

    def matches(self, room: str, device: str, point: str) -> bool:
        return (
            fnmatch.fnmatchcase(point, self.point)
            and fnmatch.fnmatchcase(device, self.device)
            and fnmatch.fnmatchcase(room, self.room)
        )


@dataclass(frozen=True)
class PointTreatment:
    kind: str  # switch | enum | analog | batch
    deadband: float
    excluded: bool
    configured: bool  # matched by a rule (or the batch device), not just the contract's default
    labels: dict[float, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchPoints:
    """Where each room's batch is reported: a device (glob) and its points."""

    device: str = "mushroom_info_*"
    entry_year: str = "in_year"
    entry_month: str = "in_month"
    entry_day: str = "in_day"
    bags: str = "in_num"
    growth_day: str = "in_day_num"

    def is_batch_device(self, device: str) -> bool:
        return fnmatch.fnmatchcase(device, self.device)


@dataclass(frozen=True)
class ComplianceRule:
    """Which setpoint governs `metric` in the device's room: a target (`point` ± `tolerance` or ±
    the last value of `tolerance_point`) or a band (`low_point`..`high_point`)."""

    metric: str
    device: str = "*"
    point: str | None = None
    tolerance: float | None = None
    tolerance_point: str | None = None
    low_point: str | None = None
    high_point: str | None = None

    @property
    def is_band(self) -> bool:
        return self.low_point is not None


@dataclass(frozen=True)
class PointConfig:
    rules: tuple[PointRule, ...]
    source: str
    batches: BatchPoints = BatchPoints()
    compliance: tuple[ComplianceRule, ...] = ()
    # each point's treatment, once per catalog: the rules' globs cost an hourly tick 17 ms for
    # its 1,000 points, and the same catalog serves every run of the process (load_point_config)
    _treatments: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def treatment(self, room: str, device: str, point: str) -> PointTreatment:
        key = (room, device, point)
        found = self._treatments.get(key)
        if found is None:
            found = self._treatments[key] = self._treatment(room, device, point)
        return found

    def _treatment(self, room: str, device: str, point: str) -> PointTreatment:
        if self.batches.is_batch_device(device):
            return PointTreatment(BATCH_KIND, 0.0, True, configured=True)
        default_kind = "switch" if is_switch_name(point) else "analog"
        for rule in self.rules:
            if rule.matches(room, device, point):
                kind = rule.kind or default_kind
                labels = rule.labels or (SWITCH_LABELS if kind == "switch" else {})
                return PointTreatment(kind, rule.deadband, rule.exclude, True, labels)
        labels = SWITCH_LABELS if default_kind == "switch" else {}
        return PointTreatment(default_kind, 0.0, False, configured=False, labels=labels)


def _rule(raw, where: str) -> PointRule:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: a rule is a mapping such as {{point: temp_set, kind: analog}}")
    try:
        rule = PointRule(**raw)
    except TypeError as err:
        raise CatalogError(f"{where}: {err}") from err
    for name in ("point", "device", "room"):
        _glob(getattr(rule, name), f"{where}: {name}")
    if rule.kind is not None and rule.kind not in KINDS:
        raise CatalogError(f"{where}: kind must be one of {KINDS}")
    if not isinstance(rule.deadband, int | float) or rule.deadband < 0 or (
        rule.deadband and rule.kind != "analog"
    ):
        raise CatalogError(f"{where}: a deadband is a non-negative number on an analog point")
    if not isinstance(rule.labels, dict):
        raise CatalogError(f"{where}: labels map values to names, e.g. {{0: \"off\", 1: auto}}")
    labels = {}
    for value, name in rule.labels.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CatalogError(f"{where}: label value {value!r} is not a number")
        labels[float(value)] = str(name)
    if labels and rule.kind == "analog":
        raise CatalogError(f"{where}: labels belong to switch and enum points, not analog ones")
    return PointRule(**{**raw, "labels": labels, "deadband": float(rule.deadband)})


def _batches(raw, where: str) -> BatchPoints:
    if raw is None:
        return BatchPoints()
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: batches is a mapping (device, entry_year, …)")
    try:
        batches = BatchPoints(**raw)
    except TypeError as err:
        raise CatalogError(f"{where}: {err}") from err
    for name in BatchPoints.__dataclass_fields__:
        _glob(getattr(batches, name), f"{where}: {name}")
    return batches


def _compliance(raw, where: str) -> ComplianceRule:
    try:
        rule = ComplianceRule(**raw)
    except TypeError as err:
        raise CatalogError(f"{where}: {err}") from err
    targets = [rule.point is not None, rule.tolerance is not None, rule.tolerance_point is not None]
    band = [rule.low_point is not None, rule.high_point is not None]
    if any(band):
        if not all(band) or any(targets):
            raise CatalogError(f"{where}: a band names low_point and high_point, and nothing else")
    elif not (rule.point is not None and targets[1] != targets[2]):
        raise CatalogError(
            f"{where}: a target names point and one of tolerance, tolerance_point; "
            "a band names low_point and high_point"
        )
    if rule.tolerance is not None and (
        isinstance(rule.tolerance, bool) or not isinstance(rule.tolerance, int | float)
        or rule.tolerance < 0
    ):
        raise CatalogError(f"{where}: tolerance is a non-negative number")
    for name in ("metric", "device", "point", "tolerance_point", "low_point", "high_point"):
        if getattr(rule, name) is not None:
            _glob(getattr(rule, name), f"{where}: {name}")
    return rule


def load_point_config(path: str | Path | None = None) -> PointConfig:
    """The file at `path` (the value of MUSHROOM_SETPOINT_CONFIG), else the shipped catalog.
    Read on every call; the same text gives the same PointConfig, parsed once."""
    path = Path(path or DEFAULT_POINTS)
    return _point_config(path, catalog_text(path, POINTS_VARIABLE))


@functools.lru_cache(maxsize=16)
def _point_config(path: Path, text: str) -> PointConfig:
    document = parse_catalog(text, path, POINTS_VARIABLE) or {}
    if not isinstance(document, dict):
        raise CatalogError(f"{POINTS_VARIABLE}: {path} is not a mapping with `rules:`")
    unknown = set(document) - {"rules", "batches", "compliance"}
    if unknown:
        raise CatalogError(f"{path}: unknown sections {sorted(unknown)} (rules, batches, compliance)")
    rules = tuple(
        _rule(raw, f"{path}: rule {number}")
        for number, raw in enumerate(document.get("rules") or [], start=1)
    )
    compliance = tuple(
        _compliance(raw, f"{path}: compliance rule {number}")
        for number, raw in enumerate(document.get("compliance") or [], start=1)
    )
    return PointConfig(rules, str(path), _batches(document.get("batches"), f"{path}: batches"),
                       compliance)
