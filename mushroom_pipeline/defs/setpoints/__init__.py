"""Device setpoints: snapshots, change events, switch statistics, their checks, hourly schedule and late-data sensor."""
