"""Room climate: readings validated from the IoT source, daily statistics, their checks, schedule and late-data sensor."""
