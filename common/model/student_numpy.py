"""The distilled query student in NumPy: the search service's query texts without torch.

``NumpyQueryStudent`` computes what ``common.model.student.StudentTextTower`` computes (the
same post-LayerNorm blocks, exact GELU, mean pooling over real tokens, float32) from the
same verified version folder, tokenizing with the ``tokenizers`` library as open_clip's
``HFTokenizer`` does (ftfy and HTML clean-up, whitespace collapsed, truncated to the
context length). A serving process that encodes query texts this way never imports torch,
which alone maps about half a gigabyte. Each text is encoded with its own padding mask, so
its vector does not depend on the other texts of its batch.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import ftfy
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from common.model.encoder_files import resolve_package_path
from common.model.errors import EncoderError
from common.model.fusion import l2_normalize
from common.model.numpy_layers import Linear, gelu, layer_norm
from common.model.student_files import STUDENT_WEIGHTS_FILE, StudentConfig, read_student_folder

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"


def clean_text(text: str) -> str:
    """open_clip's "whitespace" clean-up: ftfy, HTML entities (twice), whitespace runs."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split())


class _Block:
    """One post-LayerNorm transformer block, on token rows (batch * tokens, width)."""

    def __init__(self, weights: dict[str, np.ndarray], prefix: str) -> None:
        self.qkv, self.out = Linear(weights, f"{prefix}.qkv"), Linear(weights, f"{prefix}.out")
        self.ffn_in = Linear(weights, f"{prefix}.ffn_in")
        self.ffn_out = Linear(weights, f"{prefix}.ffn_out")
        self.norm1 = (weights[f"{prefix}.norm1.weight"], weights[f"{prefix}.norm1.bias"])
        self.norm2 = (weights[f"{prefix}.norm2.weight"], weights[f"{prefix}.norm2.bias"])

    def arrays(self) -> list[np.ndarray]:
        linears = (self.qkv, self.out, self.ffn_in, self.ffn_out)
        return [a for lin in linears for a in (lin.w_t, lin.b)] + [*self.norm1, *self.norm2]

    def __call__(
        self, x: np.ndarray, bias: np.ndarray, b: int, t: int, heads: int, eps: float
    ) -> np.ndarray:
        d = x.shape[1]
        qkv = self.qkv(x).reshape(b, t, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = q @ k.transpose(0, 1, 3, 2) * np.float32(1.0 / np.sqrt(d // heads)) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attended = (scores / scores.sum(-1, keepdims=True)) @ v
        attended = attended.transpose(0, 2, 1, 3).reshape(b * t, d)
        x = layer_norm(x + self.out(attended), *self.norm1, eps)
        return layer_norm(x + self.ffn_out(gelu(self.ffn_in(x))), *self.norm2, eps)


class NumpyQueryStudent:
    """``encode_text(texts)`` -> L2-normalized float32 vectors, like ``QueryStudent``."""

    runtime = "numpy"
    text_precision = "float32"
    precisions: tuple[str, ...] = ("float32",)

    def __init__(
        self, cfg: StudentConfig, weights: dict[str, np.ndarray], tokenizer: Tokenizer, version: str
    ) -> None:
        if cfg.width % cfg.heads:
            raise EncoderError(f"width {cfg.width} is not a multiple of {cfg.heads} heads")
        self.cfg, self._tokenizer, self.version = cfg, tokenizer, version
        self.batch_size = 128
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0
        self._word = np.asarray(weights["word.weight"], dtype=np.float32)
        self._position = np.asarray(weights["position.weight"], dtype=np.float32)
        self._token_type = np.asarray(weights["token_type"], dtype=np.float32)
        self._norm = (weights["norm.weight"], weights["norm.bias"])
        self._blocks = [_Block(weights, f"blocks.{i}") for i in range(cfg.layers)]

    @property
    def dim(self) -> int:
        return self.cfg.width

    @property
    def size_bytes(self) -> int:
        arrays = [self._word, self._position, self._token_type, *self._norm]
        for block in self._blocks:
            arrays += block.arrays()
        return sum(a.nbytes for a in arrays)

    def with_int8_text(self, calibration: Sequence[str]) -> NumpyQueryStudent:
        raise EncoderError("the NumPy query runtime computes in float32 only")

    def with_bfloat16_text(self) -> NumpyQueryStudent:
        raise EncoderError("the NumPy query runtime computes in float32 only")

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return student_token_ids(self._tokenizer, texts)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        ids = self.token_ids(texts)
        return encode_by_length(ids, self.pad_id, self.batch_size, self.dim, self.forward)

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Token ids and a 0/1 mask (batch, tokens) -> normalized mean-pooled vectors."""
        cfg = self.cfg
        b, t = ids.shape
        x = self._word[ids] + self._position[:t] + self._token_type
        x = layer_norm(x, *self._norm, cfg.layer_norm_eps).reshape(b * t, cfg.width)
        bias = np.where(mask > 0, 0.0, -np.inf).astype(np.float32)[:, None, None, :]
        for block in self._blocks:
            x = block(x, bias, b, t, cfg.heads, cfg.layer_norm_eps)
        x = x.reshape(b, t, cfg.width)
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)
        return l2_normalize(pooled)


def student_token_ids(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, cleaned as open_clip's ``HFTokenizer`` cleans it."""
    return [e.ids for e in tokenizer.encode_batch([clean_text(t) for t in texts])]


def encode_by_length(
    ids: list[list[int]],
    pad_id: int,
    batch_size: int,
    dim: int,
    forward: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """``forward(ids, mask)`` over batches of texts of similar length (padded to the longest
    of their batch), in the texts' order; a pad id inside a text is masked too, as torch's."""
    out = np.zeros((len(ids), dim), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        longest = max(1, max(len(ids[i]) for i in rows))
        batch = np.full((len(rows), longest), pad_id, dtype=np.int64)
        for r, i in enumerate(rows):
            batch[r, : len(ids[i])] = ids[i]
        out[rows] = forward(batch, (batch != pad_id).astype(np.float32))
    return out


def load_student_tokenizer(cfg: StudentConfig) -> Tokenizer:
    """The student's ``tokenizers`` tokenizer: no padding, truncated to its context."""
    tokenizer = Tokenizer.from_file(str(student_tokenizer_file(cfg)))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=cfg.context_length)
    return tokenizer


def student_tokenizer_file(cfg: StudentConfig) -> Path:
    folder = cfg.tokenizer
    if folder.startswith("pkg:"):
        folder = resolve_package_path(folder)
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise EncoderError(
            f"the student's tokenizer {cfg.tokenizer}: no {TOKENIZER_FILE} in {folder}"
        )
    return path


def load_numpy_student(folder: Path) -> NumpyQueryStudent:
    """Verify the folder's files against their manifest sha256, then load the student."""
    cfg, version = read_student_folder(folder)
    tokenizer = load_student_tokenizer(cfg)
    weights = load_file(str(folder / STUDENT_WEIGHTS_FILE))
    log.info("query texts are encoded by the distilled student %s (NumPy)", version)
    return NumpyQueryStudent(cfg, weights, tokenizer, version)
