"""Tables a step writes beside its asset's own table (quarantines, failures, references): assets
of their own in the lineage, downstream of the asset whose step writes them. Dagster never
materializes them by itself; the writing step reports each write as a materialization of the
partitions it wrote (`report_side_table`), with the row count, so the UI shows when and how much."""

from collections.abc import Mapping

import dagster as dg

from mushroom_pipeline.partitions import daily_partitions
from mushroom_pipeline.warehouse.sql import warehouse_table


def side_table(table: str, written_by: str, description: str, schema: dg.TableSchema,
               group: str, owners: list[str], tags: Mapping[str, str]) -> dg.AssetSpec:
    return dg.AssetSpec(
        table,
        deps=[written_by],
        description=f"{description} Written by {written_by}'s step, in the same run.",
        group_name=group,
        partitions_def=daily_partitions,
        kinds={"postgres"},
        owners=owners,
        tags={**tags, "layer": "side_table"},
        metadata={"dagster/column_schema": schema, "dagster/table_name": warehouse_table(table)},
    )


def report_side_table(context: dg.AssetExecutionContext, table: str,
                      rows_per_day: Mapping[str, int], **metadata) -> None:
    """One materialization of `table` per partition the step wrote (`rows_per_day`: by key)."""
    for key in context.partition_keys:
        context.log_event(dg.AssetMaterialization(
            asset_key=table, partition=key,
            metadata={"dagster/row_count": rows_per_day.get(key, 0), **metadata},
        ))
