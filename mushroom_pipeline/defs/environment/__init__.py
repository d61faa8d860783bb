"""Room climate: readings validated from the IoT source, daily statistics, their checks, schedule and late-data sensor."""

# Who answers for this domain's tables, and the tags every asset of it carries (filterable in the UI).
OWNERS = ["team:farm-climate"]
TAGS = {"domain": "environment"}
