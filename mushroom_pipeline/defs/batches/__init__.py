"""Batches in the rooms: growth days per room and day."""
