"""How steps meet trouble: transient errors are retried, missing services fail at once.

A step that loses its connection mid-query, or gets a 5xx from the object store, is retried
twice with exponential backoff (about 10 s, then 20 s). A service that is not there at all (a
refused connection, a missing bucket, weights that cannot load) raises an `UnavailableError`:
the run fails within seconds with the variable to fix, and the run-failure alert fires.
"""

import dagster as dg

TRANSIENT_RETRY = dg.RetryPolicy(
    max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

# Concurrency pools (limits in dagster.yaml): one CLIP step and one bulk-writing step at a time.
CLIP_POOL = "clip"
POSTGRES_HEAVY_POOL = "postgres_heavy"


class UnavailableError(dg.Failure):
    """A service or model is missing or misconfigured: retrying would not help."""

    def __init__(self, message: str):
        super().__init__(description=message, allow_retries=False)
