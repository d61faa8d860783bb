"""Batches in the rooms: growth days per room and day."""

# Who answers for this domain's tables, and the tags every asset of it carries (filterable in the UI).
OWNERS = ["team:growers"]
TAGS = {"domain": "batches"}
