"""room_daily_charts: one picture per day and room, for a grower to look at the day.

Each PNG (1600 × 1100 px) holds, over the room's local day:
- one axis per metric of the metric catalog (the shipped one: temperature_c, humidity_pct,
  co2_ppm), labelled "<label> (<unit>)" from the catalog, with the day's readings as a curve
  (broken where the sensor was silent for 15 min, or three of its usual intervals, or more);
- the setpoint bands of the catalog's `compliance:` rules shaded on their metric's axis as they
  were in force over the day: a step function of the stored mushroom.setpoint_snapshots, from
  each point's value in force at the day's start (its last snapshot before the day, from any
  earlier stored day) through the day's own snapshots. A target rule shades target ± tolerance
  (the fixed one, or the tolerance_point's value in force), a band rule low..high; a stretch
  without every point in force is not shaded;
- one marker per row of mushroom.setpoint_change_events of the day and room:
  - a change of a point a compliance rule maps (its target, low or high point): a diamond on
    that metric's axis, at the time of the change and the new value (on the band's new edge);
  - a change of a rule's tolerance_point (a width, not a level): a triangle at the top of that
    metric's axis;
  - a change of any other point (switches, modes, timers, grow lights): a tick in the strip
    "other changes" under the metric axes, one row per device (green: switched on, grey:
    switched off, orange: changed);
  a point that several rules map is drawn on the first rule's metric (the catalog's order),
  so each event has exactly one marker;
- a strip of up to MAX_THUMBNAILS of the day's camera images of the room (mushroom.image_manifest,
  objects not missing), chosen evenly in capture order, fetched from the object store and decoded
  as the CLIP step decodes them; an image that is gone, larger than MAX_IMAGE_BYTES or unreadable
  is skipped (not replaced).

Where the files go: `<MUSHROOM_HOME>/charts/<room>/<YYYYMMDD>.png` (run config `home` moves
them elsewhere). Not the object store: its room listing (`rooms()`, which
image_manifest and the new-images sensor walk) takes every top-level folder of the bucket for a
room, so a `charts/` prefix would be listed as one. The files are listed in the table
mushroom.room_daily_charts (one row per day and room, written by the I/O manager; a re-run
removes the day's file of a room that no longer has data, so folder and table agree) and a copy,
downscaled to stay under PREVIEW_MAX_BYTES, is shown in the materialization's metadata as
markdown with a data: URI (the UI's markdown sanitizer allows data: image sources) — for a
single-day run; a run over a range of days (a backfill) writes the files and rows and shows no
pictures (each partition's materialization would carry every day's).

Scheduling: `charts_job` (this asset only) by the schedule `daily_room_charts` at 04:07 farm
time, for yesterday: after the nightly image run (`daily_clip_inference`, 03:02, which lists
yesterday's images) and the 01:03 / 01:33 environment and insight runs.

matplotlib is used through its object-oriented API on the Agg canvas (no pyplot: its global
figure registry is not thread-safe), imported when a chart is drawn, not when the code location
loads.
"""

import base64
import datetime as dt
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa
from pydantic import Field

from mushroom_pipeline.catalog.metrics import Metric
from mushroom_pipeline.catalog.resource import FarmCatalogResource
from mushroom_pipeline.defs.automation.schedule_requests import yesterday_request
from mushroom_pipeline.defs.environment.assets import env_readings
from mushroom_pipeline.defs.insights import OWNERS, TAGS
from mushroom_pipeline.defs.insights.compliance import (
    earlier_snapshots,
    known_points,
    map_points,
)
from mushroom_pipeline.defs.setpoints.assets import (
    setpoint_change_events,
    setpoint_snapshots,
)
from mushroom_pipeline.defs.vision.manifest import image_manifest
from mushroom_pipeline.images.decode import ImageRejected, decode_image
from mushroom_pipeline.objectstore import (
    ObjectMissingError,
    ObjectStore,
    safe_key,
)
from mushroom_pipeline.partitions import FARM_TIMEZONE, FARM_TZ, daily_partitions
from mushroom_pipeline.resources import PostgresResource
from mushroom_pipeline.retries import TRANSIENT_RETRY
from mushroom_pipeline.warehouse.sql import (
    table_column_types,
    table_exists,
    warehouse_table,
)
from mushroom_pipeline.warehouse.tables import column_schema

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

CHARTS_FOLDER = "charts"  # under MUSHROOM_HOME
WIDTH_IN, HEIGHT_IN, DPI = 16, 11, 100  # 1600 × 1100 px
MAX_THUMBNAILS = 8
THUMBNAIL_SIDE = 320  # px: the longer side of a thumbnail before it is drawn
# as MUSHROOM_MAX_IMAGE_MB's default: a larger object is not fetched
MAX_IMAGE_BYTES = 50 * 1024 * 1024
PREVIEW_WIDTH = 960  # px of the copy shown in the metadata
PREVIEW_MAX_BYTES = 150_000  # its base64 text, per room
GAP = pd.Timedelta(minutes=15)  # a silence this long (at least) breaks the curve
ANNOTATE_AT_MOST = 12  # changes written beside their markers on one axis; more: markers only

READINGS_TABLE = warehouse_table("env_readings")
SNAPSHOTS_TABLE = warehouse_table("setpoint_snapshots")
EVENTS_TABLE = warehouse_table("setpoint_change_events")
MANIFEST_TABLE = warehouse_table("image_manifest")

CHARTS_SCHEMA = column_schema(
    ("day", "date", "the farm's local day of the chart"),
    ("room", "text"),
    ("path", "text", "the PNG: <MUSHROOM_HOME>/charts/<room>/<YYYYMMDD>.png"),
    ("width_px", "bigint"),
    ("height_px", "bigint"),
    ("readings", "bigint", "readings drawn (metrics of the metric catalog)"),
    ("change_events", "bigint",
     "rows of setpoint_change_events of the day and room: one marker each"),
    ("thumbnails", "bigint", "camera images drawn in the bottom strip"),
    ("images", "bigint",
     ("the day's images of the room in image_manifest (not missing): thumbnails are chosen "
      f"evenly among them, at most {MAX_THUMBNAILS}; unreadable ones are skipped")),
    ("rendered_at", "timestamptz"),
)

BAND_COLUMNS = ["metric", "device", "point", "kind", "since", "until", "low", "high"]
EVENT_COLUMNS = ["device", "point", "changed_at", "old_value", "new_value", "change_kind",
                 "old_label", "new_label"]
# where each event is drawn: on `metric`'s axis as a level (target/low/high point) or a
# tolerance; metric None: in the strip of other changes
PLACED_COLUMNS = [*EVENT_COLUMNS, "metric", "role"]
KIND_STYLE = {  # the strip of other changes: marker, colour
    "switched_on": ("|", "tab:green"),
    "switched_off": ("|", "0.45"),
    "changed": ("d", "tab:orange"),
}


# ---------------------------------------------------------------------------------------------
# What a chart shows, read from the warehouse and the object store


@dataclass(frozen=True)
class Thumbnail:
    key: str
    captured_at: pd.Timestamp
    image: "Image.Image"


@dataclass
class ChartData:
    day: dt.date
    room: str
    start: pd.Timestamp  # the local day [start, end)
    end: pd.Timestamp
    readings: pd.DataFrame  # metric, measured_at, value
    bands: pd.DataFrame  # BAND_COLUMNS
    events: pd.DataFrame  # PLACED_COLUMNS
    thumbnails: list[Thumbnail] = field(default_factory=list)
    images: int = 0  # listed in the manifest
    skipped_images: list[str] = field(default_factory=list)  # "key: reason"


def local_frame(rows, columns: list[str], tz: ZoneInfo, times: Sequence[str] = (),
                floats: Sequence[str] = ()) -> pd.DataFrame:
    frame = pd.DataFrame([tuple(row) for row in rows], columns=columns)
    for name in times:
        frame[name] = pd.to_datetime(frame[name], utc=True).dt.tz_convert(tz)
    for name in floats:
        frame[name] = frame[name].astype("float64")
    return frame


def rooms_of_day(connection: sa.Connection, day: dt.date, start: dt.datetime,
                 end: dt.datetime) -> list[str]:
    """Rooms with readings, setpoint snapshots or camera images on `day`."""
    parts = []
    if table_exists(connection, READINGS_TABLE):
        parts.append(f"SELECT DISTINCT room FROM {READINGS_TABLE} "
                     "WHERE measured_at >= %(start)s AND measured_at < %(end)s")
    for table in (SNAPSHOTS_TABLE, MANIFEST_TABLE):
        if table_exists(connection, table):
            parts.append(f"SELECT DISTINCT room FROM {table} WHERE day = %(day)s")
    if not parts:
        return []
    rows = connection.exec_driver_sql(
        f"SELECT room FROM ({' UNION '.join(parts)}) r ORDER BY 1",
        {"day": day, "start": start, "end": end},
    ).all()
    return [room for (room,) in rows]


def read_readings(connection: sa.Connection, room: str, start: dt.datetime, end: dt.datetime,
                  metrics: Sequence[str], tz: ZoneInfo) -> pd.DataFrame:
    columns = ["metric", "measured_at", "value"]
    if not table_exists(connection, READINGS_TABLE):
        return local_frame([], columns, tz, ["measured_at"], ["value"])
    rows = connection.exec_driver_sql(
        f"SELECT metric, measured_at, value FROM {READINGS_TABLE} "
        "WHERE room = %(room)s AND measured_at >= %(start)s AND measured_at < %(end)s "
        "AND metric = ANY(%(metrics)s) ORDER BY metric, measured_at",
        {"room": room, "start": start, "end": end, "metrics": list(metrics)},
    ).all()
    return local_frame(rows, columns, tz, ["measured_at"], ["value"])


def read_events(connection: sa.Connection, room: str, day: dt.date, tz: ZoneInfo) -> pd.DataFrame:
    if not table_exists(connection, EVENTS_TABLE):
        return local_frame([], EVENT_COLUMNS, tz, ["changed_at"], ["old_value", "new_value"])
    rows = connection.exec_driver_sql(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM {EVENTS_TABLE} "
        "WHERE day = %(day)s AND room = %(room)s ORDER BY changed_at, device, point",
        {"day": day, "room": room},
    ).all()
    return local_frame(rows, EVENT_COLUMNS, tz, ["changed_at"], ["old_value", "new_value"])


def role_points(pair) -> dict[str, str]:
    """{role: point} of a mapped pair (compliance.map_points' rows)."""
    roles = {"target": pair.target_point, "tolerance": pair.tolerance_point,
             "low": pair.low_point, "high": pair.high_point}
    return {role: point for role, point in roles.items() if isinstance(point, str)}


def read_setpoint_history(connection: sa.Connection, pairs: pd.DataFrame, room: str,
                          day: dt.date, start: dt.datetime, end: dt.datetime,
                          tz: ZoneInfo) -> pd.DataFrame:
    """(device, point, value, recorded_at) of the pairs' points: each one's last stored snapshot
    before the day (from any earlier day), then the day's own snapshots."""
    columns = ["device", "point", "value", "recorded_at"]
    keys = {(room, pair.device, point) for pair in pairs.itertuples(index=False)
            for point in role_points(pair).values()}
    if not keys or not table_exists(connection, SNAPSHOTS_TABLE):
        return local_frame([], columns, tz, ["recorded_at"], ["value"])
    earlier = earlier_snapshots(connection, keys, start)
    rows = connection.exec_driver_sql(
        f"SELECT device, point, value, recorded_at FROM {SNAPSHOTS_TABLE} "
        "WHERE day = %(day)s AND room = %(room)s AND NOT is_baseline "
        "AND recorded_at >= %(start)s AND recorded_at < %(end)s",
        {"day": day, "room": room, "start": start, "end": end},
    ).all()
    before = [(row.device, row.point, row.value, row.recorded_at)
              for row in earlier.itertuples(index=False)]
    return local_frame(before + [tuple(row) for row in rows], columns, tz, ["recorded_at"],
                       ["value"]).sort_values("recorded_at", ignore_index=True)


def band_segments(pairs: pd.DataFrame, history: pd.DataFrame, start: pd.Timestamp,
                  end: pd.Timestamp) -> pd.DataFrame:
    """BAND_COLUMNS: each pair's band as a step function over [start, end): one row per stretch
    with the same band; low/high NaN where not every point of the band is in force."""
    rows = []
    for pair in pairs.itertuples(index=False):
        roles = role_points(pair)
        series: dict[str, tuple[pd.DatetimeIndex, np.ndarray]] = {}
        for role, point in roles.items():
            h = history[(history["device"] == pair.device) & (history["point"] == point)]
            series[role] = (pd.DatetimeIndex(h["recorded_at"]), h["value"].to_numpy("float64"))
        times = sorted({start, *(t for ts, _ in series.values() for t in ts if start <= t < end)})

        def in_force(role: str, t: pd.Timestamp, series=series) -> float:
            if role not in series:
                return np.nan
            ts, values = series[role]
            at = ts.searchsorted(t, side="right")  # after the last snapshot <= t
            return float(values[at - 1]) if at else np.nan

        stretches: list[list] = []
        for t in times:
            if pair.kind == "target":
                tolerance = (pair.tolerance if not pd.isna(pair.tolerance)
                             else in_force("tolerance", t))
                target = in_force("target", t)
                low, high = target - tolerance, target + tolerance
            else:
                low, high = in_force("low", t), in_force("high", t)
            if np.isnan(low) or np.isnan(high):
                low = high = np.nan  # not every point in force: not shaded
            same = stretches and all(
                (a == b) or (np.isnan(a) and np.isnan(b))
                for a, b in zip(stretches[-1][1:], (low, high)))
            if not same:
                stretches.append([t, low, high])
        for number, (since, low, high) in enumerate(stretches):
            until = stretches[number + 1][0] if number + 1 < len(stretches) else end
            rows.append((pair.metric, pair.device, pair.point, pair.kind, since, until, low, high))
    frame = pd.DataFrame(rows, columns=BAND_COLUMNS)
    frame[["low", "high"]] = frame[["low", "high"]].astype("float64")
    return frame


def place_events(events: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """PLACED_COLUMNS: each event's axis. A point that a pair of its device maps (the first
    pair, in the catalog's rule order) goes on the pair's metric: as a level (target, low, high)
    or a tolerance; any other point on the strip of other changes (metric None)."""
    places: dict[tuple[str, str], tuple[str, str]] = {}
    for pair in pairs.itertuples(index=False):
        for role, point in role_points(pair).items():
            places.setdefault((pair.device, point),
                              (pair.metric, "tolerance" if role == "tolerance" else "level"))
    placed = [places.get((device, point), (None, None))
              for device, point in zip(events["device"], events["point"])]
    return events.assign(
        metric=pd.Series([p[0] for p in placed], index=events.index, dtype=object),
        role=pd.Series([p[1] for p in placed], index=events.index, dtype=object),
    )[PLACED_COLUMNS]


def pick_evenly(count: int, wanted: int) -> list[int]:
    """`wanted` indices of `count` items spread evenly, first and last included."""
    if count <= wanted:
        return list(range(count))
    if wanted == 1:
        return [0]
    return sorted({round(float(i)) for i in np.linspace(0, count - 1, wanted)})


def read_manifest(connection: sa.Connection, room: str, day: dt.date, tz: ZoneInfo) -> pd.DataFrame:
    columns = ["object_key", "size", "captured_at"]
    if not table_exists(connection, MANIFEST_TABLE):
        return local_frame([], columns, tz, ["captured_at"])
    present = ("AND missing_since IS NULL "
               if "missing_since" in table_column_types(connection, MANIFEST_TABLE) else "")
    rows = connection.exec_driver_sql(
        f"SELECT object_key, size, captured_at FROM {MANIFEST_TABLE} "
        f"WHERE day = %(day)s AND room = %(room)s {present}ORDER BY captured_at, object_key",
        {"day": day, "room": room},
    ).all()
    return local_frame(rows, columns, tz, ["captured_at"])


def load_thumbnails(store, manifest: pd.DataFrame, wanted: int = MAX_THUMBNAILS
                    ) -> tuple[list[Thumbnail], list[str]]:
    """(the thumbnails drawn, "key: reason" of each chosen image skipped)."""
    thumbnails, skipped = [], []
    for index in pick_evenly(len(manifest), wanted):
        row = manifest.iloc[index]
        key = row["object_key"]
        if pd.notna(row["size"]) and int(row["size"]) > MAX_IMAGE_BYTES:
            skipped.append(f"{key}: too_large ({int(row['size'])} bytes)")
            continue
        try:
            decoded = decode_image(store.get(key), THUMBNAIL_SIDE)
        except ObjectMissingError:
            skipped.append(f"{key}: missing")
            continue
        except ImageRejected as err:
            skipped.append(f"{key}: {err.reason}")
            continue
        image = decoded.image
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        thumbnails.append(Thumbnail(key, row["captured_at"], image))
    return thumbnails, skipped


def load_chart_data(connection: sa.Connection, store, pairs: pd.DataFrame,
                    metrics: Sequence[Metric], room: str, day: dt.date, start: dt.datetime,
                    end: dt.datetime, tz: ZoneInfo) -> ChartData:
    """Everything one chart shows: only the day's rows of one room (and each mapped point's
    value in force at the day's start)."""
    pairs = pairs[pairs["room"] == room]
    start_ts, end_ts = pd.Timestamp(start).tz_convert(tz), pd.Timestamp(end).tz_convert(tz)
    history = read_setpoint_history(connection, pairs, room, day, start, end, tz)
    manifest = read_manifest(connection, room, day, tz)
    thumbnails, skipped = load_thumbnails(store, manifest)
    return ChartData(
        day=day, room=room, start=start_ts, end=end_ts,
        readings=read_readings(connection, room, start, end, [m.name for m in metrics], tz),
        bands=band_segments(pairs, history, start_ts, end_ts),
        events=place_events(read_events(connection, room, day, tz), pairs),
        thumbnails=thumbnails, images=len(manifest), skipped_images=skipped,
    )


# ---------------------------------------------------------------------------------------------
# The picture


def _value_text(value, label) -> str:
    if isinstance(label, str):
        return label
    return "?" if value is None or pd.isna(value) else f"{value:g}"


def _change_text(event) -> str:
    return (f"{event.point} {_value_text(event.old_value, event.old_label)}→"
            f"{_value_text(event.new_value, event.new_label)}")


def _beside(t: pd.Timestamp, data: ChartData, dy: float) -> dict:
    """Where a marker's text goes: right of it, or left of it near the day's end."""
    late = (t - data.start) / (data.end - data.start) > 0.85
    return {"xytext": (-6 if late else 6, dy), "textcoords": "offset points",
            "ha": "right" if late else "left", "fontsize": 7}


def _with_gaps(times: pd.Series, values: pd.Series) -> tuple[list, np.ndarray]:
    """The curve's points, with a NaN wherever the sensor was silent for GAP or three of its
    usual intervals, whichever is longer: a sensor reporting hourly is not silent in between."""
    times, values = list(times), values.to_numpy(dtype="float64")
    usual = pd.Series(times).diff().median() if len(times) > 1 else GAP
    silence = max(GAP, 3 * usual)
    xs, ys = [], []
    for number, (t, v) in enumerate(zip(times, values)):
        if number and t - times[number - 1] >= silence:
            xs.append(times[number - 1] + (t - times[number - 1]) / 2)
            ys.append(np.nan)
        xs.append(t)
        ys.append(v)
    return [x.to_pydatetime() for x in xs], np.asarray(ys, dtype="float64")


def _draw_metric(ax, metric: Metric, data: ChartData, colours) -> None:
    from matplotlib.dates import date2num

    ax.set_gid(f"metric:{metric.name}")
    ax.set_ylabel(f"{metric.label} ({metric.unit})" if metric.unit else metric.label)
    bands = data.bands[data.bands["metric"] == metric.name]
    for number, ((device, point), band) in enumerate(bands.groupby(["device", "point"], sort=True)):
        xs = [t.to_pydatetime() for t in [*band["since"], band["until"].iloc[-1]]]
        low = np.append(band["low"].to_numpy(), band["low"].iloc[-1])
        high = np.append(band["high"].to_numpy(), band["high"].iloc[-1])
        colour = colours[number % len(colours)]
        ax.fill_between(xs, low, high, where=~(np.isnan(low) | np.isnan(high)), step="post",
                        color=colour, alpha=0.18, linewidth=0, label=f"{device} {point}",
                        gid=f"band:{device}:{point}")
        for edge in (low, high):
            ax.step(xs, edge, where="post", color=colour, linewidth=0.7, alpha=0.8)
    readings = data.readings[data.readings["metric"] == metric.name]
    if len(readings):
        xs, ys = _with_gaps(readings["measured_at"], readings["value"])
        ax.plot(xs, ys, color="black", linewidth=0.9, label=metric.label,
                gid=f"readings:{metric.name}")
    else:
        ax.text(0.5, 0.5, "no readings", transform=ax.transAxes, ha="center", va="center",
                color="0.5")
    events = data.events[data.events["metric"] == metric.name]
    levels, widths = events[events["role"] == "level"], events[events["role"] == "tolerance"]
    if len(levels):
        ax.plot([t.to_pydatetime() for t in levels["changed_at"]], levels["new_value"].to_numpy(),
                linestyle="none", marker="D", markersize=7, markerfacecolor="tab:red",
                markeredgecolor="white", zorder=5, label="setpoint change",
                gid=f"changes:{metric.name}:level")
    if len(widths):
        ax.plot([t.to_pydatetime() for t in widths["changed_at"]], np.full(len(widths), 0.95),
                transform=ax.get_xaxis_transform(), linestyle="none", marker="v", markersize=8,
                markerfacecolor="tab:purple", markeredgecolor="white", zorder=5,
                label="tolerance change", gid=f"changes:{metric.name}:tolerance")
    if len(events) <= ANNOTATE_AT_MOST:
        for event in levels.itertuples(index=False):
            ax.annotate(_change_text(event), (event.changed_at.to_pydatetime(), event.new_value),
                        color="tab:red", **_beside(event.changed_at, data, 5))
        for event in widths.itertuples(index=False):
            # blended coordinates are not unit-converted: the time as a matplotlib date number
            ax.annotate(_change_text(event), (date2num(event.changed_at.to_pydatetime()), 0.95),
                        xycoords=ax.get_xaxis_transform(), color="tab:purple",
                        **_beside(event.changed_at, data, -3))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=7, ncols=4, framealpha=0.7)
    ax.grid(True, axis="x", color="0.9")


def _draw_other_changes(ax, data: ChartData) -> None:
    ax.set_gid("other_changes")
    ax.set_ylabel("other\nchanges")
    other = data.events[data.events["metric"].isna()]
    devices = sorted(other["device"].unique())
    row = {device: number for number, device in enumerate(devices)}
    for kind, group in other.groupby("change_kind", sort=True):
        marker, colour = KIND_STYLE.get(kind, ("o", "tab:blue"))
        ax.plot([t.to_pydatetime() for t in group["changed_at"]],
                [row[d] for d in group["device"]], linestyle="none", marker=marker,
                markersize=9 if marker == "|" else 6, color=colour, markeredgewidth=1.5,
                label=kind.replace("_", " "), gid=f"changes:other:{kind}")
    analog = other[other["change_kind"] == "changed"]
    if len(analog) <= ANNOTATE_AT_MOST:
        for event in analog.itertuples(index=False):
            ax.annotate(_change_text(event), (event.changed_at.to_pydatetime(), row[event.device]),
                        color="tab:orange", **_beside(event.changed_at, data, 3))
    ax.set_yticks(range(len(devices)), devices, fontsize=7)
    ax.set_ylim(-0.7, max(len(devices), 1) - 0.3)
    if devices:
        ax.legend(loc="upper left", fontsize=7, ncols=3, framealpha=0.7)
    else:
        ax.text(0.5, 0.5, "no other setpoint changes", transform=ax.transAxes, ha="center",
                va="center", color="0.5")
    ax.grid(True, axis="x", color="0.9")


def render_chart(data: ChartData, metrics: Sequence[Metric], tz: ZoneInfo) -> "Figure":
    """The day's picture of one room as a matplotlib Figure on an Agg canvas (no pyplot)."""
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    strip_ratio, metric_ratio = 1.0, 2.4
    outer = figure.add_gridspec(
        2, 1, height_ratios=[metric_ratio * len(metrics) + strip_ratio, 1.9])
    rows = outer[0].subgridspec(len(metrics) + 1, 1,
                                height_ratios=[metric_ratio] * len(metrics) + [strip_ratio])
    first = None
    colours = ["tab:blue", "tab:green", "tab:orange", "tab:cyan", "tab:olive"]
    for number, metric in enumerate(metrics):
        ax = figure.add_subplot(rows[number], sharex=first)
        first = first or ax
        _draw_metric(ax, metric, data, colours)
        ax.tick_params(labelbottom=False)
    strip = figure.add_subplot(rows[len(metrics)], sharex=first)
    _draw_other_changes(strip, data)
    strip.set_xlim(data.start.to_pydatetime(), data.end.to_pydatetime())
    strip.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, 2), tz=tz))
    strip.xaxis.set_minor_locator(mdates.HourLocator(tz=tz))
    strip.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))
    strip.set_xlabel(f"{data.day:%A %d %B %Y}, farm time ({tz.key})")

    cells = outer[1].subgridspec(1, MAX_THUMBNAILS)
    for number, thumbnail in enumerate(data.thumbnails[:MAX_THUMBNAILS]):
        ax = figure.add_subplot(cells[number])
        ax.set_gid("thumbnail")
        ax.imshow(np.asarray(thumbnail.image))
        ax.set_title(thumbnail.captured_at.strftime("%H:%M"), fontsize=8)
        ax.set_axis_off()
    if not data.thumbnails:
        ax = figure.add_subplot(outer[1])
        ax.set_gid("no_thumbnails")
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no camera image of this day" if not data.images
                else f"{data.images} camera image(s), none readable",
                transform=ax.transAxes, ha="center", va="center", color="0.5")
    figure.suptitle(
        f"Room {data.room} · {data.day:%a %d %b %Y} · {len(data.readings)} readings · "
        f"{len(data.events)} setpoint change(s) · {len(data.thumbnails)} of {data.images} "
        "image(s)", fontsize=12)
    return figure


def png_bytes(figure: "Figure") -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def preview_markdown(png: bytes, room: str, day: dt.date, path: Path) -> str:
    """The chart, downscaled and reduced to 256 colours until its base64 text is at most
    PREVIEW_MAX_BYTES, as a markdown image with a data: URI, and the file's path."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    width = min(PREVIEW_WIDTH, image.width)
    while True:
        small = image.resize((width, round(image.height * width / image.width)),
                             Image.Resampling.LANCZOS).quantize(
            colors=256, method=Image.Quantize.FASTOCTREE)  # keeps the markers' saturated colours
        buffer = io.BytesIO()
        small.save(buffer, format="PNG", optimize=True)
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        if len(encoded) <= PREVIEW_MAX_BYTES or width <= 200:
            break
        width = int(width * 0.8)
    return f"![room {room}, {day}](data:image/png;base64,{encoded})\n\nFull size: `{path}`"


class ChartsConfig(dg.Config):
    home: str = Field(default="", description="the folder whose charts/<room>/<YYYYMMDD>.png "
                      "the PNGs are; empty: MUSHROOM_HOME")


def chart_path(home: str | Path, room: str, day: dt.date) -> Path:
    """<home>/charts/<room>/<YYYYMMDD>.png; a room name that would leave the folder is refused."""
    return Path(home).absolute() / CHARTS_FOLDER / safe_key(f"{room}/{day:%Y%m%d}.png")


def write_file(path: Path, data: bytes) -> None:
    """Replaced in one step: a reader never sees half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


# ---------------------------------------------------------------------------------------------
# The asset, its job and its schedule


@dg.asset(
    description="One PNG per day and room: the day's temperature, humidity and CO2 curves "
    "(the metric catalog's metrics), the compliance rules' setpoint bands shaded as they were "
    "in force, one marker per setpoint change event (mapped points on their metric's axis, "
    "other points in a strip per device) and up to 8 of the day's camera images. Files under "
    "<MUSHROOM_HOME>/charts/<room>/<YYYYMMDD>.png, listed here; a single-day run shows each "
    "room's chart in its metadata. Scheduled by daily_room_charts (charts_job) at 04:07 farm "
    "time for yesterday, after the 03:02 image run.",
    partitions_def=daily_partitions,
    retry_policy=TRANSIENT_RETRY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": "day", "dagster/column_schema": CHARTS_SCHEMA},
    deps=[env_readings, setpoint_snapshots, setpoint_change_events, image_manifest],
    group_name="insights",
    owners=OWNERS,
    tags={**TAGS, "layer": "insight"},
    kinds={"postgres", "matplotlib"},
)
def room_daily_charts(
    context: dg.AssetExecutionContext,
    config: ChartsConfig,
    warehouse: PostgresResource,
    farm_catalog: FarmCatalogResource,
    object_store: ObjectStore,
):
    tz = FARM_TZ
    metrics = farm_catalog.metrics().metrics
    points = farm_catalog.points()
    home = config.home or warehouse.home
    window = context.partition_time_window
    keys = context.partition_keys
    charts_folder = Path(home).absolute() / CHARTS_FOLDER
    with warehouse.begin() as conn:
        pairs = map_points(points, known_points(conn, window.end))
    rows, previews, skipped = [], {}, []
    for key in keys:
        day_window = daily_partitions.time_window_for_partition_key(key)
        day = dt.date.fromisoformat(key)
        with warehouse.begin() as conn:
            rooms = rooms_of_day(conn, day, day_window.start, day_window.end)
        written = set()
        for room in rooms:
            with warehouse.begin() as conn:
                data = load_chart_data(conn, object_store, pairs, metrics, room, day, day_window.start,
                                       day_window.end, tz)
            figure = render_chart(data, metrics, tz)
            width, height = (int(v) for v in figure.canvas.get_width_height())
            png = png_bytes(figure)
            path = chart_path(home, room, day)
            write_file(path, png)
            written.add(path)
            skipped += data.skipped_images
            rows.append({
                "day": day, "room": room, "path": str(path), "width_px": width,
                "height_px": height, "readings": len(data.readings),
                "change_events": len(data.events), "thumbnails": len(data.thumbnails),
                "images": data.images, "rendered_at": pd.Timestamp.now(tz="UTC"),
            })
            if len(keys) == 1:
                previews[f"chart_{room}"] = dg.MetadataValue.md(
                    preview_markdown(png, room, day, path))
        # the folder holds what the table lists: a room without data any more loses its file
        for stale in set(charts_folder.glob(f"*/{day:%Y%m%d}.png")) - written:
            stale.unlink(missing_ok=True)
    frame = pd.DataFrame(rows, columns=[c.name for c in CHARTS_SCHEMA.columns])
    frame["rendered_at"] = pd.to_datetime(frame["rendered_at"], utc=True)
    for column in ("width_px", "height_px", "readings", "change_events", "thumbnails", "images"):
        frame[column] = frame[column].astype("int64")
    context.log.info(
        f"{len(frame)} chart(s) of {frame['room'].nunique()} room(s) over {len(keys)} day(s) "
        f"in {charts_folder}; {len(skipped)} chosen "
        "image(s) skipped"
    )
    metadata: dict[str, object] = {
        "charts": len(frame),
        "rooms": int(frame["room"].nunique()),
        "folder": dg.MetadataValue.path(str(charts_folder)),
        "change_events": int(frame["change_events"].sum()),
        "thumbnails": int(frame["thumbnails"].sum()),
        "skipped_images": dg.MetadataValue.json(skipped[:20]),
        **previews,
    }
    if len(keys) > 1:
        metadata["pictures"] = (f"A run over {len(keys)} days shows no picture (each day's "
                                "materialization would carry all of them): the files are listed "
                                "in mushroom.room_daily_charts; re-run one day to see it here.")
    return dg.Output(frame, metadata=metadata)


charts_job = dg.define_asset_job(
    "charts_job",
    selection=dg.AssetSelection.assets(room_daily_charts),
    partitions_def=daily_partitions,
    description="Each room's picture of the day: room_daily_charts.",
)


@dg.schedule(
    name="daily_room_charts",
    cron_schedule="7 4 * * *",
    execution_timezone=FARM_TIMEZONE,
    job=charts_job,
    description="04:07 farm time: yesterday's chart per room, after the nightly runs (01:03 "
    "readings and stats, 01:33 insights, 03:02 images → manifest and CLIP), so the picture has "
    "the whole day's readings, changes and images.",
)
def daily_room_charts(context: dg.ScheduleEvaluationContext):
    return yesterday_request("daily_room_charts", context)
