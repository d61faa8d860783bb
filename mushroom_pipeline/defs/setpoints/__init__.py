"""Device setpoints: snapshots, change events, switch statistics, their checks, hourly schedule and late-data sensor."""

# Who answers for this domain's tables, and the tags every asset of it carries (filterable in the UI).
OWNERS = ["team:farm-climate"]
TAGS = {"domain": "setpoints"}
