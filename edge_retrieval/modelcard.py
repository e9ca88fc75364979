"""The model card: the JSON sidecar that says what a `.tflite` file is and how it was made.

A card sits beside its model as `<model>.json`. The runtime reads the input geometry,
colour order and output kind from it; quantization parameters are *always* read from
the model itself (the card only records them for people).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError

# package data, so an installed wheel carries its model; the repo's models/ holds the converter's other outputs
DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "models" / "mobilenet_v2_240x320_int8.tflite"

OUTPUT_KINDS = ("vector", "feature_map")
MAX_INPUT_SIDE = 4096  # a card claiming a larger input is refused (mobile models take a few hundred pixels)
MAX_OUTPUT_DIM = 1 << 16
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    # face embedders: the landmark template a face is warped to before embedding ({"size", "points", ...})
    alignment: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Every field of the right type and range: a card is read from a file that may be damaged or
        hand-edited, and a wrong value must be a ModelError naming the field, not a crash later."""

        def wrong(name: str, what: str) -> ModelError:
            return ModelError(f"model card: {name} must be {what}, not {getattr(self, name)!r}"[:300])

        for name in ("name", "architecture", "normalization", "reproduce"):
            if not isinstance(getattr(self, name), str):
                raise wrong(name, "a string")
        if not self.name.strip():
            raise wrong("name", "a non-empty string")
        if not (isinstance(self.sha256, str) and _SHA256.fullmatch(self.sha256)):
            raise wrong("sha256", "the model file's sha256 (64 hex digits)")
        for name in ("input_height", "input_width"):
            if not _is_int(getattr(self, name)) or not 1 <= getattr(self, name) <= MAX_INPUT_SIDE:
                raise wrong(name, f"a whole number of pixels from 1 to {MAX_INPUT_SIDE}")
        if not _is_int(self.output_dim) or not 1 <= self.output_dim <= MAX_OUTPUT_DIM:
            raise wrong("output_dim", f"a whole number from 1 to {MAX_OUTPUT_DIM}")
        if not isinstance(self.output_shape, list) or not all(_is_int(n) and n >= 0 for n in self.output_shape):
            raise wrong("output_shape", "a list of whole numbers")
        if self.output_kind not in OUTPUT_KINDS:
            raise ModelError(f"model card: output_kind must be one of {OUTPUT_KINDS}, not {self.output_kind!r}")
        if self.pooling not in ("gem", "avg"):
            raise ModelError(f"model card: pooling must be 'gem' or 'avg', not {self.pooling!r}")
        if self.color_order not in ("RGB", "BGR"):
            raise ModelError(f"model card: color_order must be 'RGB' or 'BGR', not {self.color_order!r}")
        if isinstance(self.gem_p, bool) or not isinstance(self.gem_p, (int, float)) or not 0.5 <= self.gem_p <= 16:
            raise wrong("gem_p", "a number from 0.5 to 16")
        for name in (
            "input_quantization",
            "output_quantization",
            "source_weights",
            "calibration",
            "validation",
            "converter",
            "whitening",
            "alignment",
        ):
            if not isinstance(getattr(self, name), dict):
                raise wrong(name, "a JSON object")
        if self.whitening:
            file, digest = self.whitening.get("file"), self.whitening.get("sha256")
            # a plain file name: the whitening sits beside the model, never elsewhere
            if not isinstance(file, str) or not file or file in (".", "..") or "/" in file or "\\" in file:
                raise ModelError(f"model card: whitening.file must be a file name beside the model, not {file!r}")
            if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
                raise ModelError(f"model card: whitening.sha256 must be the whitening file's sha256, not {digest!r}")

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
        except OSError as e:
            raise ModelError(f"{path}: model card cannot be read ({e.strerror or e})") from None
        except json.JSONDecodeError as e:
            raise ModelError(f"{path}: model card is not valid JSON ({e})") from None
        except (UnicodeDecodeError, RecursionError) as e:  # not UTF-8; nested deeper than Python recurses
            raise ModelError(f"{path}: model card is not valid JSON ({type(e).__name__})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path}: model card must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{path}: unknown model card field {unknown[0]!r}")
        missing = [
            name
            for name, f in cls.__dataclass_fields__.items()
            if name not in data and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise ModelError(f"{path}: model card field {missing[0]!r} is missing")
        try:
            return cls(**data)
        except ModelError as e:
            raise ModelError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
