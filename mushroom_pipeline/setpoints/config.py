"""The operator's point configuration (points.yaml, or MUSHROOM_SETPOINT_CONFIG)."""

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(__file__).with_name("points.yaml")
KINDS = ("switch", "enum", "analog")


class SetpointConfigError(ValueError):
    """The point configuration is unreadable or wrong; the message names the file."""


def is_switch_name(point: str) -> bool:
    """The contract: a point named `on_off` or ending in `_on_off` is a switch (0/1)."""
    return point == "on_off" or point.endswith("_on_off")


@dataclass(frozen=True)
class PointRule:
    point: str = "*"
    device: str = "*"
    room: str = "*"
    kind: str | None = None
    deadband: float = 0.0
    exclude: bool = False

    def matches(self, room: str, device: str, point: str) -> bool:
        return (
            fnmatch.fnmatchcase(point, self.point)
            and fnmatch.fnmatchcase(device, self.device)
            and fnmatch.fnmatchcase(room, self.room)
        )


@dataclass(frozen=True)
class PointTreatment:
    kind: str  # switch | enum | analog
    deadband: float
    excluded: bool
    configured: bool  # matched by a rule, not just the contract's default


@dataclass(frozen=True)
class PointConfig:
    rules: tuple[PointRule, ...]
    source: str

    def treatment(self, room: str, device: str, point: str) -> PointTreatment:
        default_kind = "switch" if is_switch_name(point) else "analog"
        for rule in self.rules:
            if rule.matches(room, device, point):
                return PointTreatment(
                    rule.kind or default_kind, rule.deadband, rule.exclude, configured=True
                )
        return PointTreatment(default_kind, 0.0, False, configured=False)


def load_point_config(path: str | os.PathLike | None = None) -> PointConfig:
    path = Path(path or os.environ.get("MUSHROOM_SETPOINT_CONFIG") or DEFAULT_CONFIG)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SetpointConfigError(f"MUSHROOM_SETPOINT_CONFIG: cannot read {path}: {err}") from err
    rules = []
    for number, raw in enumerate(document.get("rules") or [], start=1):
        try:
            rule = PointRule(**raw)
        except TypeError as err:
            raise SetpointConfigError(f"{path}: rule {number}: {err}") from err
        if rule.kind is not None and rule.kind not in KINDS:
            raise SetpointConfigError(f"{path}: rule {number}: kind must be one of {KINDS}")
        if rule.deadband < 0 or (rule.deadband and rule.kind != "analog"):
            raise SetpointConfigError(
                f"{path}: rule {number}: a deadband is a non-negative number on an analog point"
            )
        rules.append(rule)
    return PointConfig(tuple(rules), str(path))
