"""Data sets: the seeded simulator (simulate), column mappings for other data sets (datasets), the
event-time split (split) and the shared Spark session (spark)."""
