"""Cross-cutting automation: jobs, alerts, freshness checks, the request machinery sensors share."""
