"""``fedsearch pretrain``: CLIP-style training of the vision tower, text tower locked.

Images are mapped into MiniLM's 384-d space, with no text projection: in a trial, learning a
text projection cut category precision from 0.56 to 0.39, while the pretrained MiniLM
space already places queries and titles well. Because the text tower is frozen, the title
vectors are computed once; each step only runs the vision tower. Photos are
preprocessed once into one tensor, and augmentation (flip, small shifts) runs on batches.
A seeded split keeps ``val_fraction`` of the items out of training for evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from common.config import Config
from common.data.fashion import load_fashion_catalog
from common.data.records import Product
from common.model.encoder import Encoder, create_encoder
from common.model.encoder_files import ENCODER_CONFIG_FILE, ENCODER_WEIGHTS_FILE
from common.progress import progress_bar
from common.security.versions import write_version
from server.training.encoder_eval import encoder_table, evaluate_encoder

log = logging.getLogger(__name__)


def split_items(items: list[Product], val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then the first ``val_fraction`` of items are held out."""
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = max(1, round(len(items) * val_fraction))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [items[i] for i in train], [items[i] for i in val]


def _augment(pixels: torch.Tensor, shift: int = 4) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to ``shift`` pixels, per batch row."""
    flip = torch.rand(len(pixels)) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    size = pixels.shape[-1]
    padded = F.pad(pixels, (shift,) * 4, mode="reflect")
    dx, dy = torch.randint(0, 2 * shift + 1, (2,)).tolist()
    return padded[..., dy : dy + size, dx : dx + size]


def _clip_loss(image_vecs: torch.Tensor, text_vecs: torch.Tensor, scale: torch.Tensor):
    logits = scale.exp().clamp(max=100) * image_vecs @ text_vecs.T
    target = torch.arange(len(logits))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train_vision_tower(
    encoder: Encoder,
    pixels: torch.Tensor,
    title_vecs: torch.Tensor,
    config: Config,
) -> dict[str, float]:
    """Train ``encoder``'s vision tower in place for ``pretrain.steps`` steps (fewer if the
    optional time budget runs out first); return stats."""
    cfg = config.pretrain
    model = encoder.model
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    params = [p for p in model.visual.parameters()] + [model.logit_scale]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the augmentations draw from torch's default generator
    steps_per_epoch = max(1, len(pixels) // cfg.batch_size)
    step, epoch, loss, progress = 0, 0, float("nan"), 0.0
    start = time.monotonic()
    bar = progress_bar(total=100, desc="pretrain", unit="%", bar_format=_BAR)
    model.visual.train()
    while progress < 1.0:
        order = torch.randperm(len(pixels), generator=generator)
        for batch in order[: steps_per_epoch * cfg.batch_size].split(cfg.batch_size):
            progress = step / cfg.steps
            if progress >= 1.0 or _out_of_time(start, cfg.time_budget_s):
                progress = 1.0
                break
            _set_lr(optimizer, cfg.lr, progress)
            image_vecs = F.normalize(model.encode_image(_augment(pixels[batch])), dim=-1)
            loss_t = _clip_loss(image_vecs, title_vecs[batch], model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss_t.backward()
            optimizer.step()
            loss, step = loss_t.item(), step + 1
        epoch += 1
        bar.n = round(100 * min(progress, 1.0))
        bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}")
        bar.refresh()
    bar.close()
    model.eval()
    seconds = time.monotonic() - start
    return {"epochs": epoch, "steps": step, "train_seconds": seconds, "final_loss": loss}


_BAR = "{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}"


def _out_of_time(start: float, budget_s: float) -> bool:
    return budget_s > 0 and time.monotonic() - start >= budget_s


def _set_lr(optimizer: torch.optim.Optimizer, base: float, progress: float) -> None:
    """Linear warm-up over the first 5% of training, then cosine decay to zero."""
    warmup = 0.05
    if progress < warmup:
        lr = base * max(progress, 1e-3) / warmup
    else:
        lr = base * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _preprocess_all(encoder: Encoder, items: list[Product]) -> torch.Tensor:
    from common.model.encoder import load_image

    return torch.stack(
        [
            encoder.preprocess(load_image(p.image_path))
            for p in progress_bar(items, desc="load photos", leave=False)
        ]
    )


def save_checkpoint(encoder: Encoder, root: Path, manifest: dict, metrics: dict) -> Path:
    """Write a ``local-dir:``-loadable version folder: weights, open_clip config, metrics."""

    def write(folder: Path) -> None:
        state = {k: v.detach().contiguous() for k, v in encoder.model.state_dict().items()}
        save_file(state, str(folder / ENCODER_WEIGHTS_FILE))
        preprocess_cfg = getattr(encoder.model.visual, "preprocess_cfg", {})
        open_clip_cfg = {"model_cfg": encoder.config, "preprocess_cfg": preprocess_cfg}
        (folder / ENCODER_CONFIG_FILE).write_text(json.dumps(open_clip_cfg, indent=2), "utf-8")
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2), "utf-8")

    return write_version(root, write, manifest)


def run_pretrain(config: Config) -> tuple[Path, dict]:
    """Train, evaluate on held-out items, save a version; return (folder, metrics)."""
    cfg = config.pretrain
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    items, report = load_fashion_catalog(config.paths.fashion)
    log.info(report.summary())
    train, val = split_items(items, cfg.val_fraction, cfg.seed)
    encoder = create_encoder(config.encoder.model, "none", encoder_dir=config.paths.encoders)
    encoder.batch_size = config.encoder.batch_size
    title_vecs = encoder.encode_text([p.title for p in items], progress=True)
    index = {p.id: i for i, p in enumerate(items)}
    train_titles = torch.from_numpy(title_vecs[[index[p.id] for p in train]])
    pixels = _preprocess_all(encoder, train)
    stats = train_vision_tower(encoder, pixels, train_titles, config)
    results = evaluate_encoder(
        encoder,
        val,
        text_weight=config.encoder.text_weight,
        image_weight=config.encoder.image_weight,
        title_vecs=title_vecs[[index[p.id] for p in val]],
    )
    metrics = {"validation": results, "n_train": len(train), "n_val": len(val), **stats}
    manifest = {
        "model": config.encoder.model,
        "pretrain": cfg.model_dump(),
        "data": {"catalog": str(config.paths.fashion), "load_report": report.summary()},
        "metrics": metrics,
        "val_ids": [p.id for p in val],
    }
    folder = save_checkpoint(encoder, config.paths.encoders, manifest, metrics)
    print(
        f"\nvalidation: {len(val)} held-out items (never trained on); trained "
        f"{stats['steps']} steps ({stats['epochs']} epochs) in {stats['train_seconds']:.0f}s"
    )
    print(encoder_table(results))
    print(
        f'\nsaved {folder} (load with encoder.pretrained = "latest" or '
        f'encoder.model = "local-dir:{folder}")'
    )
    return folder, metrics
