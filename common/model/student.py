"""A small query text tower distilled from the base encoder's MiniLM (``fedsearch distill``).

The student keeps the teacher's vocabulary, embeddings and 384-d width, so its vectors live
in the teacher's space and the item vectors in the index stay as they are. It is a plain
post-LayerNorm BERT written in a few torch calls (fused q/k/v, ``scaled_dot_product_attention``,
exact GELU, mean pooling over real tokens): ``student_from_teacher`` copies a few of the
teacher's layers and prunes each feed-forward block to its ``ffn`` most important neurons
(by the product of their in- and out-weight norms) before distillation retrains them.

A version folder (``<work_dir>/query_encoder/v0001``) holds ``query_student.safetensors``,
``query_student.json`` (the architecture and tokenizer) and a manifest with the sha256 of
each file, checked before loading.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import open_clip
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from common.model.bfloat16 import bfloat16_linears
from common.model.encoder_files import resolve_package_path
from common.model.errors import EncoderError
from common.model.int8 import module_bytes, quantize_linears
from common.model.student_files import (
    STUDENT_CONFIG_FILE,
    STUDENT_WEIGHTS_FILE,
    StudentConfig,
    read_student_folder,
)

if TYPE_CHECKING:
    from transformers import BertModel
    from transformers.models.bert.modeling_bert import BertLayer

log = logging.getLogger(__name__)


class _Block(nn.Module):
    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.heads, self.eps = cfg.heads, cfg.layer_norm_eps
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.width, cfg.ffn)
        self.ffn_out = nn.Linear(cfg.ffn, cfg.width)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.norm1(x + self.out(attended.transpose(1, 2).reshape(b, t, d)))
        out: torch.Tensor = self.norm2(x + self.ffn_out(F.gelu(self.ffn_in(x))))
        return out


class StudentTextTower(nn.Module):
    """Token ids and attention mask (batch, tokens) -> L2-normalized mean-pooled vectors."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position = nn.Embedding(cfg.max_positions, cfg.width)
        self.token_type = nn.Parameter(torch.zeros(cfg.width))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = self.position.weight[: ids.shape[1]]
        x = self.norm(self.word(ids) + positions + self.token_type)
        bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(mask == 0, float("-inf"))
        bias = bias[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        return F.normalize(pooled.float(), dim=-1)


def student_from_teacher(bert: BertModel, layers: Sequence[int], ffn: int) -> StudentTextTower:
    """A student initialised from a Hugging Face BERT: its embeddings, the teacher ``layers``
    (indices, in order) with each feed-forward block pruned to its ``ffn`` most important
    neurons."""
    tcfg = bert.config
    if tcfg.hidden_act != "gelu" or getattr(tcfg, "position_embedding_type", "absolute") != (
        "absolute"
    ):
        raise EncoderError("the student copies a BERT with GELU and absolute positions only")
    if not 1 <= ffn <= tcfg.intermediate_size:
        raise EncoderError(f"ffn must be in [1, {tcfg.intermediate_size}], got {ffn}")
    if not layers or not all(0 <= i < tcfg.num_hidden_layers for i in layers):
        raise EncoderError(f"layers must be teacher layers 0..{tcfg.num_hidden_layers - 1}")
    cfg = StudentConfig(
        layers=len(layers),
        ffn=ffn,
        width=tcfg.hidden_size,
        heads=tcfg.num_attention_heads,
        vocab_size=tcfg.vocab_size,
        max_positions=tcfg.max_position_embeddings,
        layer_norm_eps=tcfg.layer_norm_eps,
    )
    student = StudentTextTower(cfg)
    emb = bert.embeddings
    with torch.no_grad():
        student.word.weight.copy_(emb.word_embeddings.weight)
        student.position.weight.copy_(emb.position_embeddings.weight)
        student.token_type.copy_(emb.token_type_embeddings.weight[0])
        student.norm.load_state_dict(emb.LayerNorm.state_dict())
        for block, index in zip(student.blocks, layers, strict=True):
            _copy_layer(cast(_Block, block), cast("BertLayer", bert.encoder.layer[index]), ffn)
    return student


def _copy_layer(block: _Block, layer: BertLayer, ffn: int) -> None:
    attn = layer.attention
    parts = (attn.self.query, attn.self.key, attn.self.value)
    block.qkv.weight.copy_(torch.cat([p.weight for p in parts]))
    block.qkv.bias.copy_(torch.cat([p.bias for p in parts]))
    block.out.load_state_dict(attn.output.dense.state_dict())
    block.norm1.load_state_dict(attn.output.LayerNorm.state_dict())
    w_in, b_in = layer.intermediate.dense.weight, layer.intermediate.dense.bias
    w_out = layer.output.dense.weight
    importance = w_in.norm(dim=1) * w_out.norm(dim=0)
    keep = importance.topk(ffn).indices.sort().values
    block.ffn_in.weight.copy_(w_in[keep])
    block.ffn_in.bias.copy_(b_in[keep])
    block.ffn_out.weight.copy_(w_out[:, keep])
    block.ffn_out.bias.copy_(layer.output.dense.bias)
    block.norm2.load_state_dict(layer.output.LayerNorm.state_dict())


def student_tokenizer(cfg: StudentConfig) -> open_clip.tokenizer.HFTokenizer:
    folder = cfg.tokenizer
    if folder.startswith("pkg:"):
        folder = resolve_package_path(folder)
    return open_clip.tokenizer.HFTokenizer(folder, context_length=cfg.context_length)


class QueryStudent:
    """The student as a query text encoder: ``encode_text`` like ``Encoder.encode_text``
    (batched by length, padding trimmed), with the same precision copies."""

    precisions: tuple[str, ...] = ("float32", "bfloat16", "int8")

    def __init__(self, tower: StudentTextTower, *, version: str) -> None:
        self.tower = tower.eval()
        self.tokenizer = student_tokenizer(tower.cfg)
        self.version = version
        self.batch_size = 128
        self.text_precision = "float32"

    @property
    def dim(self) -> int:
        return self.tower.cfg.width

    def with_int8_text(self, calibration: Sequence[str]) -> QueryStudent:
        """A copy whose linear layers run in int8 (``common.model.int8``), calibrated on
        ``calibration`` texts."""
        out = copy.copy(self)

        def calibrate(tower: nn.Module) -> None:
            out.tower = cast(StudentTextTower, tower)
            out.encode_text(list(calibration))

        out.tower = cast(StudentTextTower, quantize_linears(self.tower, calibrate))
        out.text_precision = "int8"
        return out

    def with_bfloat16_text(self) -> QueryStudent:
        """A copy whose linear layers compute in bfloat16 (``common.model.bfloat16``)."""
        out = copy.copy(self)
        out.tower = cast(StudentTextTower, bfloat16_linears(self.tower))
        out.text_precision = "bfloat16"
        return out

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def size_bytes(self) -> int:
        return module_bytes(self.tower)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        pad = self.tokenizer.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            ids = self.tokenizer([texts[i] for i in rows])
            mask = ids != pad  # as the teacher: a pad id inside a text is masked too
            positions = torch.arange(1, ids.shape[1] + 1)
            ids = ids[:, : max(1, int((mask * positions).max()))]  # up to the last real token
            mask = mask[:, : ids.shape[1]].long()
            out[rows] = self.tower(ids, mask).numpy()
        return out


def save_student(folder: Path, tower: StudentTextTower) -> None:
    """Write the weights and architecture into ``folder`` (a version being staged)."""
    state = {k: v.detach().contiguous() for k, v in tower.state_dict().items()}
    save_file(state, str(folder / STUDENT_WEIGHTS_FILE))
    (folder / STUDENT_CONFIG_FILE).write_text(json.dumps(asdict(tower.cfg), indent=2), "utf-8")


def load_query_student(folder: Path) -> QueryStudent:
    """Verify the folder's files against their manifest sha256, then load the student."""
    cfg, version = read_student_folder(folder)
    tower = StudentTextTower(cfg)
    tower.load_state_dict(load_file(str(folder / STUDENT_WEIGHTS_FILE)))
    log.info("query texts are encoded by the distilled student %s", version)
    return QueryStudent(tower, version=version)
