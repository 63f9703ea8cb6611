"""Schedules: the forms and their next run times (the only croniter user), zones, the clock."""
