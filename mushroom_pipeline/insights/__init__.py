"""Insights built on the warehouse's readings and setpoints (../shared/CONTRACTS.md, "Insight
tables"): did each room hold its setpoints (setpoint_compliance), and how did the room answer
each setpoint change (change_responses)."""
