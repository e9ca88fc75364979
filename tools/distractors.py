"""The distractor photos the learning tools read: `--oxford DIR` (the tune half of the Oxford
pure distractors, the split benchmarks/captures.py uses for its tune scenes) or `--photos DIR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from edge_retrieval.enroll import list_images  # noqa: E402


def add_arguments(ap: argparse.ArgumentParser) -> None:
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--oxford", type=Path, help="the Oxford folder: use the tune half of its pure distractors")
    src.add_argument("--photos", type=Path, help="any folder of distractor photos")


def photos(args: argparse.Namespace) -> tuple[list[Path], str, str]:
    """(photos, where they come from, the option that named them)."""
    if args.oxford:
        import captures

        found = captures.scene_split(captures.oxford_distractors(args.oxford), "tune")
        return (
            found,
            (f"Oxford pure distractors, tune half ({len(found)} photos; benchmarks/captures.py scene_split)"),
            f"--oxford {args.oxford}",
        )
    found = list_images(args.photos)
    return found, f"{args.photos} ({len(found)} photos)", f"--photos {args.photos}"
