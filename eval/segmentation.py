"""Segmentation on the pretrained encoder: segmentation_models_pytorch U-Net whose ResNet encoder
takes the model's backbone weights (strictly: every key, same shapes), trained with BCE + soft
Dice, scored by Dice at 0.5 per image (an empty mask predicted empty scores 1).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.errors import UserError
from eval import metrics


def build_unet(model):
    """U-Net with model's backbone in the encoder. The trunk sees 3 channels (the grey image
    expanded by the model's own input adapter), so in_channels is what conv1 expects."""
    import segmentation_models_pytorch as smp

    if getattr(model, "backbone_name", None) is None:
        raise UserError(f"model {getattr(model, 'name', '?')}: segmentation needs a ResNet image encoder "
                        f"(this one has none)")
    state = model.backbone_state_dict()
    in_channels = int(state["conv1.weight"].shape[1])
    unet = smp.Unet(encoder_name=model.backbone_name, encoder_weights=None, in_channels=in_channels, classes=1)
    unet.encoder.load_state_dict(dict(state), strict=True)  # missing or extra keys raise here
    return unet


def encoder_input(model, images: torch.Tensor) -> torch.Tensor:
    """Grey [B,1,S,S] -> what the backbone saw in pretraining (its channel adapter, if any)."""
    adapter = getattr(getattr(model, "image_encoder", None), "adapter", None)
    return adapter(images) if adapter is not None else images.expand(-1, 3, -1, -1)


def _soft_dice_loss(logits, target):
    p = logits.sigmoid()
    inter = (p * target).sum(dim=(1, 2, 3))
    return (1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)).mean()


@torch.no_grad()
def predict(unet, model, images, batch_size: int = 16) -> np.ndarray:
    unet.eval()
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    out = [unet(encoder_input(model, x[i:i + batch_size])).sigmoid()[:, 0] for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0,) + tuple(x.shape[-2:]), np.float32)


def dice_at(probs: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean([metrics.dice(p >= threshold, m) for p, m in zip(probs, masks)]))


def train_segmentation(model, train: tuple, valid: tuple, test: tuple, epochs: int = 10, lr: float = 1e-3,
                       batch_size: int = 8, seed: int = 0, max_steps: int | None = None) -> dict:
    """train/valid/test: (images [N,1,S,S] float, masks [N,S,S] bool). Keeps the epoch with the
    best validation Dice; returns test Dice at 0.5 and the training record."""
    torch.manual_seed(seed)
    unet = build_unet(model)
    opt = torch.optim.Adam(unet.parameters(), lr=lr)
    x = torch.as_tensor(np.asarray(train[0], dtype=np.float32))
    y = torch.as_tensor(np.asarray(train[1], dtype=np.float32))[:, None]
    gen = torch.Generator().manual_seed(seed)
    best, best_state, steps, history = -1.0, None, 0, []
    for epoch in range(epochs):
        unet.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            b = order[i:i + batch_size]
            if len(b) < 2:  # batch norm needs two samples
                continue
            logits = unet(encoder_input(model, x[b]))
            loss = F.binary_cross_entropy_with_logits(logits, y[b]) + _soft_dice_loss(logits, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if max_steps and steps >= max_steps:
                break
        v = dice_at(predict(unet, model, valid[0]), valid[1])
        history.append({"epoch": epoch + 1, "valid_dice": v})
        if v > best:
            best, best_state = v, {k: t.clone() for k, t in unet.state_dict().items()}
        if max_steps and steps >= max_steps:
            break
    unet.load_state_dict(best_state)
    probs = predict(unet, model, test[0])
    return {"dice": dice_at(probs, test[1]), "valid_dice": best, "steps": steps, "history": history,
            "n_train": int(len(x)), "n_test": int(len(test[0])), "probs": probs, "unet": unet}
