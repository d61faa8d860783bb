"""The batch in each room per day (entry date, bags, growth day), read from the farm's
mushroom_info device, and the environment statistics joined to it."""
