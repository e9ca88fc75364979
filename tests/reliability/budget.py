"""How hard the reliability tests push: bounded in CI and plain runs, the full counts with
EDGE_RETRIEVAL_RELIABILITY=full."""

import os

FULL = os.environ.get("EDGE_RETRIEVAL_RELIABILITY", "") == "full"


def budget(bounded: int, full: int) -> int:
    """A repeat count: `bounded` in CI and plain runs, `full` with EDGE_RETRIEVAL_RELIABILITY=full."""
    return full if FULL else bounded
