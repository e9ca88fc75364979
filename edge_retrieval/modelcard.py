"""The model card: the JSON sidecar that says what a `.tflite` file is and how it was made.

A card sits beside its model as `<model>.json`. The runtime reads the input geometry,
colour order and output kind from it; quantization parameters are *always* read from
the model itself (the card only records them for people).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = REPO_MODELS / "mobilenet_v2_240x320_int8.tflite"

OUTPUT_KINDS = ("vector", "feature_map")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """Everything the runtime and a person need to know about one converted model."""

    name: str
    architecture: str  # "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"
    sha256: str  # of the .tflite file
    input_height: int
    input_width: int
    color_order: str  # "RGB": the model expects RGB pixels 0..255, normalization baked in
    output_kind: str  # "vector" (pooled in the model) or "feature_map" (H×W×C, pooled at run time)
    output_dim: int  # channels of the descriptor
    output_shape: list[int] = field(default_factory=list)
    pooling: str = "gem"  # how a feature map becomes a vector at run time: "gem" or "avg"
    gem_p: float = 3.0
    normalization: str = "baked"  # ImageNet mean/std inside the network
    input_quantization: dict[str, Any] = field(default_factory=dict)
    output_quantization: dict[str, Any] = field(default_factory=dict)
    source_weights: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    converter: dict[str, Any] = field(default_factory=dict)
    reproduce: str = ""
    # learned PCA-whitening applied after pooling: {"file": "<beside the model>.npz", "dim", "sha256",
    # "source", "reproduce"}; empty = none (descriptors are the pooled channels)
    whitening: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output_kind not in OUTPUT_KINDS:
            raise ModelError(f"model card: output_kind must be one of {OUTPUT_KINDS}, not {self.output_kind!r}")
        if self.pooling not in ("gem", "avg"):
            raise ModelError(f"model card: pooling must be 'gem' or 'avg', not {self.pooling!r}")
        if self.color_order not in ("RGB", "BGR"):
            raise ModelError(f"model card: color_order must be 'RGB' or 'BGR', not {self.color_order!r}")

    @staticmethod
    def path_for(model_path: str | Path) -> Path:
        return Path(model_path).with_suffix(".json")

    @classmethod
    def load(cls, path: str | Path) -> "ModelCard":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"{path}: model card not found (every .tflite needs its .json card beside it)") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"{path}: model card is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path}: model card must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{path}: unknown model card field {unknown[0]!r}")
        try:
            return cls(**data)
        except TypeError as e:
            raise ModelError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
