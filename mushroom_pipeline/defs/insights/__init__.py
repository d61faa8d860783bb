"""Farm insights: setpoint compliance and change responses, their checks and schedule."""
