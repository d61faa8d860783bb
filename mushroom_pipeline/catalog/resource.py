"""The farm's catalog as a resource: runs, sensors and the CLI read the same files, named by the
same variables (MUSHROOM_METRIC_CATALOG, MUSHROOM_SETPOINT_CONFIG)."""

import dagster as dg

from mushroom_pipeline.catalog.metrics import MetricCatalog, load_metric_catalog
from mushroom_pipeline.catalog.points import CatalogError, PointConfig, load_point_config


class FarmCatalogResource(dg.ConfigurableResource):
    """Unset paths mean the catalog shipped in the package (the farm's, CONTRACTS.md)."""

    metrics_path: str | None = None
    points_path: str | None = None

    def metrics(self) -> MetricCatalog:
        return load_metric_catalog(self.metrics_path)

    def points(self) -> PointConfig:
        return load_point_config(self.points_path)

    def validate(self) -> None:
        """Reads both files and checks that they agree: compliance rules name catalog metrics."""
        metrics, points = self.metrics(), self.points()
        known = {m.name for m in metrics.metrics}
        for number, rule in enumerate(points.compliance, start=1):
            if rule.metric not in known:
                raise CatalogError(
                    f"{points.source}: compliance rule {number} names metric {rule.metric!r}, "
                    f"which {metrics.source} does not define (canonical names: {sorted(known)})"
                )
