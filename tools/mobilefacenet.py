"""MobileFaceNet rebuilt in PyTorch from the npm package's float .tflite (its tensors, its graph).

The package's MobileFaceNet.tflite (a TF1 export: opcodes in `deprecated_builtin_code`, batch 2,
no SignatureDef) spells each PReLU as relu(x) + c·(x − |x|) with c = α/2. Quantized as it is (once
given a signature, batch 1 and current opcodes) its float-vs-int8 cosine is 0.95, so the graph is
read back into torch — convolutions with their folded batch norm, one PReLU module per chain,
residual adds — rescaled by `equalize`, and handed to the project's own litert-torch +
ai-edge-quantizer path like MobileNetV2.

The walk is generic over what the file holds (CONV_2D, DEPTHWISE_CONV_2D, the PReLU chain,
ADD, RESHAPE) and refuses anything else by name, so a different file fails loudly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_retrieval.errors import ModelError

# tflite BuiltinOperator codes used by the file
ADD, CONV_2D, DEPTHWISE_CONV_2D, MUL, RELU, RESHAPE, SUB, ABS = 0, 3, 4, 18, 19, 22, 41, 101
PIXEL_MEAN, PIXEL_STD = 127.5, 128.0  # the package's normalization (MyUtil.normalizeImage)


def _read(path: Path):
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        return flatbuffer_utils.read_model(str(path))
    except Exception as e:  # a truncated or foreign file: the flatbuffer reader raises anything
        raise ModelError(f"{path}: not a readable TFLite file ({type(e).__name__}: {e})") from None


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (extra pixel after, not before): torch's symmetric padding differs on stride 2."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def build(path: str | Path):
    """The torch module: NCHW float RGB 0..255 in (normalization inside), (1, 192) raw embedding out."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    path = Path(path)
    model = _read(path)
    sg = model.subgraphs[0]
    codes = [max(oc.builtinCode, oc.deprecatedBuiltinCode) for oc in model.operatorCodes]

    def const(i: int) -> np.ndarray:
        t = sg.tensors[i]
        data = model.buffers[t.buffer].data
        if data is None:
            raise ModelError(f"{path}: tensor {t.name.decode()} has no data")
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32).reshape(t.shape).copy()

    class PReLU(nn.Module):
        """prelu(x) = x + (1 − α)·relu(−x): the form whose int8 ops XNNPACK all takes.

        nn.PReLU lowers to relu(x) − α·relu(−x), and a lone int8 RELU is not delegated (33
        partitions, int8 slower than float); here relu(−x) becomes a MUL with a fused ReLU."""

        def __init__(self, alpha):
            super().__init__()
            self.weight = nn.Parameter(alpha.view(1, -1, 1, 1).clone())

        def forward(self, x):
            return x + (1.0 - self.weight) * torch.relu(-x)

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList()
            self.steps: list[tuple] = []  # (kind, layer index, input tensors, output tensor, extra)
            ops = sg.operators
            k = 0
            while k < len(ops):
                op, code = ops[k], codes[ops[k].opcodeIndex]
                ins, out = list(op.inputs), op.outputs[0]
                if code in (CONV_2D, DEPTHWISE_CONV_2D):
                    o = op.builtinOptions
                    if o.fusedActivationFunction != 0 or o.dilationHFactor != 1 or o.dilationWFactor != 1:
                        raise ModelError(f"{path}: op {k}: fused activation or dilation is not supported")
                    w, b = const(ins[1]), const(ins[2])
                    n, kh, kw, c = w.shape  # OHWI; depthwise: 1, H, W, C
                    depthwise = code == DEPTHWISE_CONV_2D
                    in_ch = sg.tensors[ins[0]].shape[3]
                    conv = nn.Conv2d(
                        in_ch,
                        c if depthwise else n,
                        (kh, kw),
                        stride=(o.strideH, o.strideW),
                        groups=in_ch if depthwise else 1,
                    )
                    weight = w.transpose(3, 0, 1, 2) if depthwise else w.transpose(0, 3, 1, 2)
                    conv.weight.data = torch.from_numpy(np.ascontiguousarray(weight))
                    conv.bias.data = torch.from_numpy(b)
                    h, wd = sg.tensors[ins[0]].shape[1:3]
                    pad = (0, 0, 0, 0)
                    if o.padding == 0:  # SAME
                        pad = (*_same_padding(int(wd), kw, o.strideW), *_same_padding(int(h), kh, o.strideH))
                    self.steps.append(("conv", len(self.layers), [ins[0]], out, pad))
                    self.layers.append(conv)
                    k += 1
                elif code == RELU:
                    # relu(x) + c·(x − |x|): RELU, ABS, SUB, MUL, ADD on the same x
                    chain = [codes[ops[k + j].opcodeIndex] for j in range(5)] if k + 5 <= len(ops) else []
                    if chain != [RELU, ABS, SUB, MUL, ADD]:
                        raise ModelError(f"{path}: op {k}: RELU not followed by the PReLU chain ABS, SUB, MUL, ADD")
                    mul = ops[k + 3]
                    c = next(const(i) for i in mul.inputs if model.buffers[sg.tensors[i].buffer].data is not None)
                    prelu = PReLU(torch.from_numpy(2.0 * c.ravel()))
                    self.steps.append(("prelu", len(self.layers), [ins[0]], ops[k + 4].outputs[0], None))
                    self.layers.append(prelu)
                    k += 5
                elif code == ADD:
                    self.steps.append(("add", -1, ins, out, None))
                    k += 1
                elif code == RESHAPE:
                    self.steps.append(("flatten", -1, [ins[0]], out, None))
                    k += 1
                else:
                    raise ModelError(f"{path}: op {k}: builtin operator {code} is not supported")
            self.input, self.output = sg.inputs[0], sg.outputs[0]

        def forward(self, x):
            values = {self.input: (x - PIXEL_MEAN) / PIXEL_STD}
            for kind, layer, ins, out, extra in self.steps:
                if kind == "conv":
                    values[out] = self.layers[layer](F.pad(values[ins[0]], extra))
                elif kind == "prelu":
                    values[out] = self.layers[layer](values[ins[0]])
                elif kind == "add":
                    values[out] = values[ins[0]] + values[ins[1]]
                else:
                    values[out] = torch.flatten(values[ins[0]], 1)
            return values[self.output]

    return Graph().eval()


def equalize(graph, samples: list[np.ndarray]) -> int:
    """Rescale channels across conv → PReLU → conv pairs so int8's per-tensor activation ranges fit.

    A few channels of this network run 10-100× larger than the rest; with one scale per tensor the
    others are left a handful of int8 levels (cosine 0.96 after quantization). PReLU is positively
    homogeneous (prelu(x / s) = prelu(x) / s per channel), so channel c of the first conv can be
    divided by s_c and the next conv's input channel c multiplied by s_c: the float network is
    unchanged. Into a depthwise conv (weights quantized per channel) the ranges are made equal
    (s_c = r_c / mean r); into a 1×1 conv, whose weights are quantized per output channel, the
    range moves half way (s_c = √(r_c / w_c), as SmoothQuant's α = 0.5). `samples`: NCHW float
    pixels 0..255. Returns the number of pairs rescaled.
    """
    import torch

    consumers: dict[int, list[int]] = {}
    for i, (_, _, ins, _, _) in enumerate(graph.steps):
        for t in ins:
            consumers.setdefault(t, []).append(i)
    pairs = []
    for i, (kind, layer, _, out, _) in enumerate(graph.steps):
        if kind != "conv" or consumers.get(out) != [i + 1] or graph.steps[i + 1][0] != "prelu":
            continue
        p_out = graph.steps[i + 1][3]
        nxt = consumers.get(p_out, [])
        if len(nxt) == 1 and graph.steps[nxt[0]][0] == "conv":
            pairs.append((layer, graph.steps[i + 1][1], graph.steps[nxt[0]][1], out, p_out))

    peaks: dict[int, torch.Tensor] = {}  # tensor → per-channel max |x| over the samples
    watched = {t for pair in pairs for t in pair[3:]}
    hooks = []
    for kind, layer, _, out, _ in graph.steps:
        if out in watched and kind in ("conv", "prelu"):

            def hook(_m, _i, y, out=out):
                peak = y.detach().abs().amax(dim=(0, 2, 3))
                peaks[out] = torch.maximum(peaks[out], peak) if out in peaks else peak

            hooks.append(graph.layers[layer].register_forward_hook(hook))
    with torch.no_grad():
        for x in samples:
            graph(torch.from_numpy(np.ascontiguousarray(x)))
    for h in hooks:
        h.remove()

    with torch.no_grad():
        for a, _prelu, b, out, p_out in pairs:
            first, second = graph.layers[a], graph.layers[b]
            r = torch.maximum(peaks[out], peaks[p_out]).clamp_min(1e-6)
            if second.groups == second.in_channels and second.groups > 1:
                s = r / r.mean()
            else:
                w = second.weight.abs().amax(dim=(0, 2, 3)).clamp_min(1e-8)
                s = (r / w).sqrt()
                s = s / s.mean()  # keep the overall scale where it was
            s = s.clamp(1e-3, 1e3)
            first.weight.div_(s.view(-1, 1, 1, 1))
            first.bias.div_(s)
            if second.groups > 1:  # depthwise: (C, 1, kh, kw), channel c is output channel c
                second.weight.mul_(s.view(-1, 1, 1, 1))
            else:
                second.weight.mul_(s.view(1, -1, 1, 1))
    return len(pairs)
