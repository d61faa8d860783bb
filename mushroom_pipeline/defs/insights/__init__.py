"""Farm insights: setpoint compliance and change responses, their checks and schedule."""

# Who answers for this domain's tables, and the tags every asset of it carries (filterable in the UI).
OWNERS = ["team:growers"]
TAGS = {"domain": "insights"}
