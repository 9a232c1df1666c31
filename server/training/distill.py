"""``fedsearch distill``: a small query text tower trained to reproduce the teacher's vectors.

The teacher is the configured base encoder's MiniLM text tower; the student
(``common.model.student``) starts from a few of its layers with pruned feed-forward blocks.
Training text is public catalog text only (``server.training.distill_texts``). The loss has
two parts: ``1 - cos(student, teacher)`` per phrase, and the KL divergence between the
teacher's and the student's softmax over the scores of every catalog item (fashion items
fused as in the index, retail items by title) at a low temperature, so the student learns
the ranking the teacher gives, not only the direction. A seeded set of held-out phrases is
never trained on; it measures top-10 agreement with the teacher. Item vectors stay the
teacher's: nothing needs re-indexing.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from common.config import Config
from common.data.fashion import load_fashion_catalog
from common.data.retail import TRANSACTIONS_FILE, load_retail_catalog
from common.model.encoder import Encoder
from common.model.student import QueryStudent, StudentTextTower, save_student, student_from_teacher
from common.model.student_files import QUERY_MODEL_DIR
from common.progress import progress_bar
from common.security.versions import write_version
from server.training.distill_eval import DistillData, evaluate_student, report_table
from server.training.distill_texts import fashion_phrases, retail_phrases, split_phrases

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillSettings:
    """Student shape and training: teacher ``layers`` copied, ``ffn`` neurons kept per block;
    ``steps`` AdamW steps of ``batch_size`` phrases; ``temperature`` of the item softmax."""

    layers: tuple[int, ...] = (0, 5)
    ffn: int = 768
    steps: int = 3000
    batch_size: int = 256
    lr: float = 3e-4
    temperature: float = 0.05
    rank_weight: float = 1.0
    heldout: int = 1000
    max_train: int = 30000
    seed: int = 0


def distill_data(config: Config, teacher: Encoder, settings: DistillSettings) -> DistillData:
    """Phrases (train / held out), their teacher vectors, and the catalog item vectors."""
    fashion, _ = load_fashion_catalog(config.paths.fashion)
    retail, retail_report = load_retail_catalog(config.paths.retail / TRANSACTIONS_FILE)
    phrases = sorted(fashion_phrases(fashion) | retail_phrases(retail))
    train, heldout = split_phrases(phrases, settings.heldout, settings.max_train, settings.seed)
    print(
        f"distillation text: {len(phrases):,} distinct catalog phrases; {len(train):,} to "
        f"train on, {len(heldout):,} held out"
    )
    teacher.batch_size = config.encoder.batch_size
    fashion_items = teacher.encode_items(
        [p.title for p in fashion],
        [p.image_path for p in fashion],
        text_weight=config.encoder.text_weight,
        image_weight=config.encoder.image_weight,
        progress=True,
    )
    retail_items = teacher.encode_text([p.title for p in retail], progress=True)
    return DistillData(
        train=train,
        heldout=heldout,
        train_vectors=teacher.encode_text(train, progress=True),
        heldout_vectors=teacher.encode_text(heldout, progress=True),
        fashion=fashion,
        fashion_items=fashion_items,
        retail_items=retail_items,
        retail_source=retail_report.source,
    )


def train_student(
    student: StudentTextTower,
    tokens: dict[str, torch.Tensor],
    data: DistillData,
    s: DistillSettings,
) -> dict[str, float | None]:
    """Train ``student`` in place; the word embeddings stay the teacher's. A batch is a random
    window of the phrases sorted by token count, so it is padded little. No steps: the copy
    stays untrained (no final loss)."""
    if not s.steps:
        return {"train_seconds": 0.0, "final_loss": None}
    student.word.weight.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.01)
    targets = torch.from_numpy(data.train_vectors)
    items = torch.from_numpy(np.concatenate([data.fashion_items, data.retail_items]))
    generator = torch.Generator().manual_seed(s.seed)
    lengths = tokens["mask"].sum(1).float()
    by_length = torch.argsort(lengths + torch.rand(len(lengths), generator=generator))
    last_start = max(1, len(by_length) - s.batch_size + 1)
    student.train()
    began, loss = time.monotonic(), float("nan")
    for step in progress_bar(range(s.steps), desc="distill", leave=False):
        _set_lr(optimizer, s.lr, step / s.steps)
        start_row = int(torch.randint(last_start, (1,), generator=generator))
        batch = by_length[start_row : start_row + s.batch_size]
        ids, mask = _trimmed(tokens["ids"][batch], tokens["mask"][batch])
        vectors = student(ids, mask)
        teacher = targets[batch]
        direction = (1 - (vectors * teacher).sum(1)).mean()
        log_p = F.log_softmax(vectors @ items.T / s.temperature, dim=1)
        log_q = F.log_softmax(teacher @ items.T / s.temperature, dim=1)
        ranking = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
        loss_t = direction + s.rank_weight * ranking
        optimizer.zero_grad(set_to_none=True)
        loss_t.backward()
        optimizer.step()
        loss = loss_t.item()
    student.eval()
    return {"train_seconds": round(time.monotonic() - began, 1), "final_loss": round(loss, 5)}


def _trimmed(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, int(mask.sum(1).max()))
    return ids[:, :width], mask[:, :width]


def _set_lr(optimizer: torch.optim.Optimizer, base: float, progress: float) -> None:
    """Linear warm-up over the first 5%, then cosine decay to zero."""
    warmup = 0.05
    lr = (
        base * max(progress, 1e-3) / warmup
        if progress < warmup
        else base * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))
    )
    for group in optimizer.param_groups:
        group["lr"] = lr


def tokenize(student: QueryStudent, texts: list[str]) -> dict[str, torch.Tensor]:
    ids = student.tokenizer(texts)
    return {"ids": ids, "mask": (ids != student.tokenizer.tokenizer.pad_token_id).long()}


def run_distill(
    config: Config, teacher: Encoder, settings: DistillSettings, *, threads: int = 0
) -> tuple[Path, dict[str, Any]]:
    """Distill, evaluate against the teacher, save a version; return (folder, metrics)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(settings.seed)
    data = distill_data(config, teacher, settings)
    bert = teacher.model.text.transformer
    tower = student_from_teacher(bert, settings.layers, settings.ffn)
    student = QueryStudent(tower, version="training")
    stats = train_student(tower, tokenize(student, data.train), data, settings)
    metrics = {**stats, **evaluate_student(config, teacher, student, data)}
    manifest = {
        "kind": "query-student",
        "teacher": teacher.version,
        "settings": asdict(settings),
        "data": {
            "fashion": str(config.paths.fashion),
            "retail_products": data.retail_source,
            "train_phrases": len(data.train),
            "heldout_phrases": len(data.heldout),
        },
        "metrics": metrics,
    }
    folder = write_version(
        config.paths.work / QUERY_MODEL_DIR, lambda f: save_student(f, tower), manifest
    )
    print(report_table(metrics))
    print(
        f'\nsaved {folder} (serve it with encoder.query_model = "latest" or '
        f'encoder.query_model = "{folder}")'
    )
    return folder, metrics
