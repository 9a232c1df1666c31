"""The query student in ONNX Runtime: float32, or int8 with a scale per token row.

``OnnxQueryStudent`` computes what ``common.model.student_numpy.NumpyQueryStudent`` computes,
from the same verified version folder, without torch. Its graph is built here from the
student's config and weights (``onnx.helper``), not exported by torch, so the only file to
trust is the verified weights file. An untrained copy of all of the teacher's layers
(``fedsearch distill --steps 0 --layers 0,1,2,3,4,5 --ffn 1536``) is the base encoder's
text tower itself, so this runtime serves the teacher's query vectors too.

int8 (``with_int8_text``): each linear layer's weights become int8 codes with SmoothQuant
channel scales (``common.model.int8_codes``), and its input is quantized per token row,
from that row alone (uint8 codes around 128, ONNX Runtime's u8s8 ``MatMulInteger``), the
recipe of ``common.model.int8``. ONNX Runtime's own dynamic quantization scales a whole
batch by its range, so a query's vector would depend on its batch; here it does not (the
float parts between the products sum in another order in a padded batch: 5e-8). Layer
norms, softmax and the attention products stay float32.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from common.model.errors import EncoderError
from common.model.fusion import l2_normalize
from common.model.int8_codes import INT8_MAX, TINY, Int8Codes, smoothed_int8_codes
from common.model.student_files import STUDENT_WEIGHTS_FILE, StudentConfig, read_student_folder
from common.model.student_numpy import (
    encode_by_length,
    load_student_tokenizer,
    student_token_ids,
)

log = logging.getLogger(__name__)

OPSET = 17
LINEARS = ("qkv", "out", "ffn_in", "ffn_out")
_MASKED = -1e30  # added to a padding token's attention score: its softmax weight is 0


class _GraphBuilder:
    """Nodes and constants of one ONNX graph, each node with a single, generated output."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray | np.generic) -> str:
        self.constants.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def scalar(self, value: float, dtype: type[np.generic] = np.float32) -> str:
        """A shared scalar constant."""
        name = f"{np.dtype(dtype).name}_{value!r}"
        if not any(c.name == name for c in self.constants):
            self.const(name, dtype(value))
        return name

    def op(self, op_type: str, *inputs: str, out: str = "", **attributes: Any) -> str:
        self._count += 1
        out = out or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attributes))
        return out


def student_graph(
    cfg: StudentConfig,
    weights: dict[str, np.ndarray],
    *,
    int8: dict[str, Int8Codes] | None = None,
    probe: bool = False,
) -> onnx.ModelProto:
    """The student's forward pass: ``ids`` (int64) and ``mask`` (float32, 1 for a real
    token), both (batch, tokens) -> ``pooled`` (batch, width), mean-pooled, not normalized.
    ``int8``: codes per linear layer name (``blocks.0.qkv``); ``probe``: each linear layer's
    input is a graph output too, named after the layer, and the float weights are graph
    inputs (``probe_feed``) fed at each run, so that a calibration session holds no copy
    of them."""
    g = _GraphBuilder()
    if probe:  # named only: ``probe_feed`` makes the arrays once, for the runs
        inputs = {name: name for name in weights}
    else:
        float_weights = _float_constants(weights, skip=set(int8 or ()))
        inputs = {name: g.const(name, array) for name, array in float_weights.items()}
    zero, one, two = (g.const(f"i{i}", np.array([i])) for i in range(3))
    tokens = g.op("Slice", g.op("Shape", "ids"), one, two)
    positions = g.op("Slice", inputs["position.weight"], zero, tokens, zero)  # rows 0..tokens
    x = g.op("Add", g.op("Gather", inputs["word.weight"], "ids"), positions)
    x = g.op("Add", x, inputs["token_type"])
    x = _layer_norm(g, x, inputs, "norm", cfg.layer_norm_eps)
    masked = g.op("Mul", g.op("Sub", g.scalar(1.0), "mask"), g.scalar(_MASKED))
    bias = g.op("Unsqueeze", masked, g.const("axes12", np.array([1, 2])))
    probes: list[str] = []
    for i in range(cfg.layers):
        x = _block(g, x, bias, inputs, f"blocks.{i}", cfg, int8, probes)
    mask = g.op("Unsqueeze", "mask", g.const("axes2", np.array([2])))
    total = g.op("ReduceSum", g.op("Mul", x, mask), one, keepdims=0)
    count = g.op("ReduceSum", "mask", one, keepdims=1)
    pooled = g.op("Div", total, g.op("Max", count, g.scalar(1.0)))
    g.nodes.append(helper.make_node("Identity", [pooled], ["pooled"]))
    outputs = ["pooled", *(probes if probe else [])]
    graph = helper.make_graph(
        g.nodes,
        "query_student",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "tokens"]),
            *(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                for name in (weights if probe else ())
            ),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        g.constants,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def probe_feed(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights that a ``probe`` graph takes as inputs."""
    return _float_constants(weights, skip=set())


def _float_constants(weights: dict[str, np.ndarray], skip: set[str]) -> dict[str, np.ndarray]:
    """Every weight as float32, linear weights transposed for a right-hand product; the
    weights of the linear layers in ``skip`` left out."""
    out = {}
    for name, array in weights.items():
        if name.removesuffix(".weight") in skip:
            continue
        array = np.asarray(array, dtype=np.float32)
        linear = name.endswith(".weight") and name.split(".")[-2] in LINEARS
        out[name] = np.ascontiguousarray(array.T) if linear else array
    return out


def _layer_norm(g: _GraphBuilder, x: str, inputs: dict[str, str], name: str, eps: float) -> str:
    weight, bias = inputs[f"{name}.weight"], inputs[f"{name}.bias"]
    return g.op("LayerNormalization", x, weight, bias, axis=-1, epsilon=eps)


def _block(
    g: _GraphBuilder,
    x: str,
    bias: str,
    inputs: dict[str, str],
    prefix: str,
    cfg: StudentConfig,
    int8: dict[str, Int8Codes] | None,
    probes: list[str],
) -> str:
    """One post-LayerNorm block, as ``student_numpy._Block``."""

    def linear(h: str, name: str) -> str:
        layer = f"{prefix}.{name}"
        probes.append(g.op("Identity", h, out=layer))
        codes = None if int8 is None else int8.get(layer)
        product = (
            g.op("MatMul", layer, inputs[f"{layer}.weight"])
            if codes is None
            else _int8_product(g, layer, codes)
        )
        return g.op("Add", product, inputs[f"{layer}.bias"])

    head = cfg.width // cfg.heads
    split_heads = g.const(f"{prefix}.split_heads", np.array([0, 0, 3, cfg.heads, head]))
    qkv = g.op("Reshape", linear(x, "qkv"), split_heads)  # (batch, tokens, 3, heads, head)
    qkv = g.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])
    q, k, v = (g.op("Gather", qkv, g.const(f"{prefix}.part{i}", np.array(i))) for i in range(3))
    scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
    scores = g.op("Add", g.op("Mul", scores, g.scalar(1.0 / math.sqrt(head))), bias)
    attended = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
    join_heads = g.const(f"{prefix}.join_heads", np.array([0, 0, cfg.width]))
    attended = g.op("Reshape", g.op("Transpose", attended, perm=[0, 2, 1, 3]), join_heads)
    x = g.op("Add", x, linear(attended, "out"))
    x = _layer_norm(g, x, inputs, f"{prefix}.norm1", cfg.layer_norm_eps)
    hidden = linear(x, "ffn_in")  # then exact GELU: x * (1 + erf(x / sqrt 2)) / 2
    erf = g.op("Erf", g.op("Div", hidden, g.scalar(math.sqrt(2))))
    hidden = g.op("Mul", g.op("Mul", hidden, g.op("Add", erf, g.scalar(1.0))), g.scalar(0.5))
    x = g.op("Add", x, linear(hidden, "ffn_out"))
    return _layer_norm(g, x, inputs, f"{prefix}.norm2", cfg.layer_norm_eps)


def _int8_product(g: _GraphBuilder, layer: str, codes: Int8Codes) -> str:
    """``layer``'s input (named ``layer``) times its weights, in int8 with a scale per row."""
    rows = g.op("Mul", layer, g.const(f"{layer}.inverse_smooth", codes.inverse_smooth))
    row_max = g.op("ReduceMax", g.op("Abs", rows), axes=[-1], keepdims=1)
    row_max = g.op("Max", row_max, g.scalar(TINY))
    row_scale = g.op("Div", row_max, g.scalar(float(INT8_MAX)))
    shifted = g.op("Add", g.op("Round", g.op("Div", rows, row_scale)), g.scalar(128.0))
    quantized = g.op("Cast", shifted, to=TensorProto.UINT8)  # int8 codes + 128, as uint8
    weights = g.const(f"{layer}.codes", codes.codes)
    sums = g.op("MatMulInteger", quantized, weights, g.scalar(128, np.uint8))
    product = g.op("Mul", g.op("Cast", sums, to=TensorProto.FLOAT), row_scale)
    return g.op("Mul", product, g.const(f"{layer}.scale", codes.scale))


class OnnxQueryStudent:
    """``encode_text(texts)`` -> L2-normalized float32 vectors, like ``QueryStudent``."""

    runtime = "onnx"
    precisions: tuple[str, ...] = ("float32", "int8")

    def __init__(
        self,
        cfg: StudentConfig,
        weights: dict[str, np.ndarray],
        tokenizer: Tokenizer,
        version: str,
        *,
        threads: int = 0,
    ) -> None:
        if cfg.width % cfg.heads:
            raise EncoderError(f"width {cfg.width} is not a multiple of {cfg.heads} heads")
        self.cfg, self.version, self.threads = cfg, version, threads
        self._weights, self._tokenizer = weights, tokenizer
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0
        self.batch_size = 128
        self.text_precision = "float32"
        self.size_bytes = 4 * sum(np.asarray(a).size for a in weights.values())  # as float32
        # built on first use, so not at all for a student only converted to int8: that cut
        # the start-up's peak memory from 872 to 658 MiB (loading, converting, one encode)
        self._session: ort.InferenceSession | None = None

    @property
    def dim(self) -> int:
        return self.cfg.width

    def _new_session(self, model: bytes) -> ort.InferenceSession:
        """An ONNX Runtime session of a serialized graph, on the CPU."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def _input_maxima(self, calibration: Sequence[str]) -> dict[str, np.ndarray]:
        """Each linear layer's largest input per channel over the texts, each run alone."""
        probe = self._new_session(
            student_graph(self.cfg, self._weights, probe=True).SerializeToString()
        )
        names = [o.name for o in probe.get_outputs()][1:]
        feed = probe_feed(self._weights)
        largest: dict[str, np.ndarray] = {}
        for ids in student_token_ids(self._tokenizer, calibration):
            batch = np.asarray([ids or [self.pad_id]], dtype=np.int64)
            feed |= {"ids": batch, "mask": np.ones(batch.shape, np.float32)}
            outputs = probe.run(names, feed)
            for name, x in zip(names, outputs, strict=True):
                row_max = np.abs(x).reshape(-1, x.shape[-1]).max(axis=0)
                largest[name] = np.maximum(largest.get(name, row_max), row_max)
        return largest

    def with_int8_text(self, calibration: Sequence[str]) -> OnnxQueryStudent:
        """A copy whose linear layers run in int8, smoothed by each input channel's largest
        value over the ``calibration`` texts (each run alone, so no padding counts)."""
        if self.text_precision != "float32":
            raise EncoderError(f"a {self.text_precision} student cannot be converted again")
        if not calibration:
            raise ValueError("int8 needs at least one calibration text")
        int8 = {
            name: smoothed_int8_codes(self._weights[f"{name}.weight"], largest)
            for name, largest in self._input_maxima(calibration).items()
        }
        model = student_graph(self.cfg, self._weights, int8=int8)
        out = copy.copy(self)
        out.size_bytes = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
        out._session = out._new_session(model.SerializeToString())
        out._weights = {}  # not converted again (``at_precision``): ONNX Runtime holds the rest
        out.text_precision = "int8"
        return out

    def with_bfloat16_text(self) -> OnnxQueryStudent:
        raise EncoderError("the onnx query runtime computes in float32 or int8, not bfloat16")

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return student_token_ids(self._tokenizer, texts)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        ids = self.token_ids(texts)
        return encode_by_length(ids, self.pad_id, self.batch_size, self.dim, self._forward)

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self._session is None:
            graph = student_graph(self.cfg, self._weights).SerializeToString()
            self._session = self._new_session(graph)
        pooled = self._session.run(["pooled"], {"ids": ids, "mask": mask})[0]
        return l2_normalize(pooled)


def load_onnx_student(folder: Path, *, threads: int = 0) -> OnnxQueryStudent:
    """Verify the folder's files against their manifest sha256, then load the student (its
    ONNX Runtime session is built when it first encodes or converts; ``threads``: the
    session's intra-op threads, 0 its default)."""
    cfg, version = read_student_folder(folder)
    tokenizer = load_student_tokenizer(cfg)
    weights = load_file(str(folder / STUDENT_WEIGHTS_FILE))
    log.info("query texts are encoded by the distilled student %s (ONNX Runtime)", version)
    return OnnxQueryStudent(cfg, weights, tokenizer, version, threads=threads)
