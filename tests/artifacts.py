"""Where tests leave what a person should look at (screenshots, fuzz counts): the folder named by
$EDGE_RETRIEVAL_ARTIFACTS (e.g. `EDGE_RETRIEVAL_ARTIFACTS=test-artifacts pytest …`), else a
temporary folder: tests write only under temporary folders unless asked."""

import os
import tempfile
from pathlib import Path


def artifacts() -> Path:
    folder = Path(
        os.environ.get("EDGE_RETRIEVAL_ARTIFACTS") or Path(tempfile.gettempdir()) / "edge-retrieval-artifacts"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder
