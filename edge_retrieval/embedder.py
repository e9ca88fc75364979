"""The embedder: a LiteRT int8 model and its card → L2-normalized float32 descriptors."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import descriptors, preprocess, regions
from .errors import ModelError, one_line
from .modelcard import DEFAULT_MODEL, ModelCard, sha256_file

XNNPACK_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
_FD2 = threading.Lock()  # file descriptor 2 is the process's: one redirection at a time


@contextmanager
def _without_xnnpack_notice():
    """LiteRT's C++ prints XNNPACK_NOTICE on file descriptor 2 when tensors are allocated, which a
    CLI user should not see: fd 2 goes to a temporary file meanwhile, and every other line is
    written back to fd 2 afterwards (real errors are not lost, only delayed)."""
    with _FD2:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (closed by the caller): nothing to hide
            yield
            return
        sys.stderr.flush()  # Python's buffered output goes out first, in order
        try:
            caught = tempfile.TemporaryFile()
        except OSError:  # no writable temporary folder (a full disk, a file-size limit): show the notice
            os.close(saved)
            yield
            return
        with caught:
            os.dup2(caught.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                lines = caught.read().splitlines(keepends=True)
                rest = b"".join(line for line in lines if line.rstrip(b"\r\n") != XNNPACK_NOTICE)
                if rest:
                    os.write(2, rest)


def unsupported_platform() -> str | None:
    """The one-line reason this machine cannot run the model: 32-bit ARM (Raspberry Pi OS 32-bit,
    also on a 64-bit kernel) without a TFLite runtime, since LiteRT publishes no wheel for it."""
    import importlib.util
    import platform
    import struct

    machine = platform.machine()
    arm32 = machine.startswith("arm") or (machine == "aarch64" and struct.calcsize("P") == 4)
    if not arm32 or any(importlib.util.find_spec(m) for m in ("ai_edge_litert", "tflite_runtime")):
        return None
    return (
        f"32-bit ARM ({machine}, 32-bit Python) is not supported: LiteRT (ai-edge-litert) publishes no "
        "32-bit ARM wheel; install Raspberry Pi OS 64-bit (Bookworm) and edge-retrieval there"
    )


def load_interpreter(model_path: str, num_threads: int):
    """LiteRT's interpreter (ai-edge-litert), falling back to tflite-runtime, with its tensors allocated.

    EDGE_RETRIEVAL_OP_RESOLVER=ref selects LiteRT's reference kernels (slow, plain C++): the
    optimized ones crash under qemu's aarch64 emulation (tests/test_aarch64.py runs that way)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ModelError(
                unsupported_platform()
                or "no TFLite runtime: pip install ai-edge-litert (or tflite-runtime with numpy<2)"
            ) from None
    options = {}
    if os.environ.get("EDGE_RETRIEVAL_OP_RESOLVER", "").strip().lower() == "ref":
        resolvers = sys.modules[Interpreter.__module__].OpResolverType  # (either runtime's module has it)
        options["experimental_op_resolver_type"] = resolvers.BUILTIN_REF
    with _without_xnnpack_notice():
        try:
            interp = Interpreter(model_path=model_path, num_threads=num_threads, **options)
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{model_path}: not a loadable TFLite model ({one_line(e)})") from None
        try:
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{model_path}: not a usable TFLite model ({one_line(e)})") from None
    return interp


@dataclass(frozen=True)
class TensorQuantization:
    scale: float
    zero_point: int
    dtype: np.dtype

    @classmethod
    def of(cls, details: dict) -> "TensorQuantization":
        """Read from the interpreter's tensor details (the model itself, never hard-coded)."""
        scale, zero_point = details["quantization"]
        return cls(float(scale), int(zero_point), np.dtype(details["dtype"]))


class Embedder:
    """Turns BGR frames or image files into descriptors.

    >>> with Embedder() as emb:
    ...     vecs = emb.embed_files(["a.jpg", "b.jpg"])   # (2, dim) float32, unit norm
    """

    def __init__(self, model_path: str | Path | None = None, num_threads: int = 2):
        self.model_path = Path(model_path or DEFAULT_MODEL)
        if not self.model_path.is_file():
            raise ModelError(f"{self.model_path}: model file not found")
        self.card = ModelCard.load(ModelCard.path_for(self.model_path))
        try:
            self.sha256 = sha256_file(self.model_path)
        except OSError as e:
            raise ModelError(f"{self.model_path}: cannot be read ({e.strerror or e})") from None
        if self.card.sha256 != self.sha256:  # the card always names its model (ModelCard checks it is there)
            raise ModelError(
                f"{self.model_path}: sha256 {self.sha256[:12]}… does not match its card ({self.card.sha256[:12]}…)"
            )
        self._interp = load_interpreter(str(self.model_path), num_threads)
        try:
            inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{self.model_path}: not a usable TFLite model ({one_line(e)})") from None
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"{self.model_path}: {len(inputs)} input(s) and {len(outputs)} output(s); "
                f"an embedding model has one of each"
            )
        inp, out = inputs[0], outputs[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        if len(inp["shape"]) != 4 or inp["shape"][0] != 1 or inp["shape"][3] != 3:
            raise ModelError(f"{self.model_path}: input shape {list(inp['shape'])}, expected [1, height, width, 3]")
        h, w = int(inp["shape"][1]), int(inp["shape"][2])
        if (h, w) != (self.card.input_height, self.card.input_width):
            raise ModelError(
                f"{self.model_path}: input {h}×{w} differs from the card's "
                f"{self.card.input_height}×{self.card.input_width}"
            )
        expected = 4 if self.card.output_kind == "feature_map" else 2
        if len(out["shape"]) != expected or int(out["shape"][-1]) != self.card.output_dim:
            raise ModelError(
                f"{self.model_path}: output shape {list(out['shape'])} does not match the card's "
                f"{self.card.output_kind} of {self.card.output_dim} channels"
            )
        if self.card.output_shape and list(out["shape"]) != self.card.output_shape:
            raise ModelError(
                f"{self.model_path}: output shape {list(out['shape'])} differs from the card's {self.card.output_shape}"
            )
        self.input_quant = TensorQuantization.of(inp)
        self.output_quant = TensorQuantization.of(out)
        q = self.output_quant  # True when the lowest code dequantizes to ≥ 0 (a ReLU output); else unknown
        self._nonnegative = (
            q.scale > 0 and np.issubdtype(q.dtype, np.integer) and q.zero_point <= np.iinfo(q.dtype).min
        ) or None
        if not np.issubdtype(self.input_quant.dtype, np.integer):
            raise ModelError(f"{self.model_path}: input is {self.input_quant.dtype}, expected a full-integer model")
        self._lut = preprocess.input_lut(self.input_quant.scale, self.input_quant.zero_point, self.input_quant.dtype)
        self.input_size = (w, h)
        self.whitening = self._load_whitening()
        # clear while `invoke` runs the interpreter, whose threads take every core they are given:
        # a video file's decoder thread waits for it (camera.FileSource `yield_to`)
        self.idle = threading.Event()
        self.idle.set()

    def _load_whitening(self) -> "regions.Whitening | None":
        spec = self.card.whitening
        if not spec:
            return None
        path = self.model_path.parent / spec["file"]  # a plain file name (ModelCard checks it)
        if not path.is_file():
            raise ModelError(f"{path}: whitening file named by the model card not found")
        try:
            digest = sha256_file(path)
        except OSError as e:
            raise ModelError(f"{path}: cannot be read ({e.strerror or e})") from None
        if digest != spec["sha256"]:
            raise ModelError(f"{path}: sha256 does not match the model card")
        try:
            whitening = regions.Whitening.load(path)
        except ModelError:
            raise
        except Exception as e:  # np.load of a damaged archive: BadZipFile, EOFError, a bare .npy array, …
            raise ModelError(f"{path}: not a whitening file ({type(e).__name__}: {one_line(e)})") from None
        mean, proj = whitening.mean, whitening.proj
        if proj.ndim != 2 or mean.shape != (proj.shape[1],) or not 1 <= proj.shape[0] <= proj.shape[1]:
            raise ModelError(f"{path}: whitening of shape mean {mean.shape}, projection {proj.shape} is malformed")
        if proj.shape[1] != self.card.output_dim:
            raise ModelError(f"{path}: whitens {proj.shape[1]} channels, the model has {self.card.output_dim}")
        if "dim" in spec and spec["dim"] != proj.shape[0]:
            raise ModelError(f"{path}: whitens to {proj.shape[0]} dimensions, the model card says {spec['dim']!r}")
        if not (np.isfinite(mean).all() and np.isfinite(proj).all()):
            raise ModelError(f"{path}: whitening holds NaN or infinity")
        return whitening

    @property
    def dim(self) -> int:
        return self.whitening.dim if self.whitening is not None else self.card.output_dim

    # -- the model ------------------------------------------------------------
    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """BGR uint8 frame → the model's quantized (H, W, 3) input."""
        w, h = self.input_size
        return preprocess.to_input(frame, w, h, self.card.color_order, self._lut)

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """One prepared input → the dequantized float32 output (feature map H×W×C or vector C)."""
        self.idle.clear()
        try:
            self._interp.set_tensor(self._in_index, tensor[None])
            self._interp.invoke()
            out = self._interp.get_tensor(self._out_index)[0].astype(np.float32)
        finally:
            self.idle.set()
        q = self.output_quant
        if q.scale:  # in place: no temporaries (right after an invoke every byte touched is a cache miss)
            out -= np.float32(q.zero_point)
            out *= np.float32(q.scale)
        return out

    def describe(self, output: np.ndarray) -> np.ndarray:
        """Model output → L2-normalized descriptor (pooling a feature map as the card says)."""
        if self.card.output_kind == "feature_map":
            output = descriptors.pool(output, self.card.pooling, self.card.gem_p, self._nonnegative)
        if self.whitening is not None:
            return self.whitening(output.reshape(1, -1))[0]
        return descriptors.l2_normalize(output.reshape(-1))

    def regions(self, frame: np.ndarray, levels: int = 3, boxes=()) -> "regions.Regions":
        """One forward pass → the whole-frame descriptor (row 0, equal to `embed`'s) and the
        descriptors of the R-MAC grid regions and of `boxes` (frame fractions x0, y0, x1, y1)."""
        output = self.invoke(self.prepare(frame))
        if self.card.output_kind != "feature_map":
            raise ModelError(f"{self.model_path}: regional descriptors need a feature-map model")
        return regions.describe(output, self.card.gem_p, levels, self.whitening, boxes)

    # -- public API -----------------------------------------------------------
    def embed(self, frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """One BGR frame (H, W, 3) or a sequence of them → (n, dim) float32 unit vectors."""
        if isinstance(frames, np.ndarray) and frames.ndim in (2, 3):
            frames = [frames]
        out = np.empty((len(frames), self.dim), np.float32)
        for i, frame in enumerate(frames):
            out[i] = self.describe(self.invoke(self.prepare(frame)))
        return out

    def embed_files(self, paths: Iterable[str | Path]) -> np.ndarray:
        """Image files → (n, dim) descriptors; BadImageError names the first bad file."""
        paths = list(paths)
        out = np.empty((len(paths), self.dim), np.float32)
        for i, path in enumerate(paths):
            out[i] = self.embed(preprocess.read_image(path))[0]
        return out

    def close(self) -> None:
        self._interp = None

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
