"""Every Dagster definition of the farm, one folder per domain, loaded by `dg.load_from_defs_folder`."""
