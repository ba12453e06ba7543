"""Linear probe (MGCA's protocol): frozen image encoder, one linear layer on the pooled feature,
AdamW 5e-4, early stopping on the validation loss; training subsets of 1%, 10% and 100% sampled
with a fixed seed; AUC per class on the test split.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from eval.zero_shot import summarise

FRACTIONS = (0.01, 0.1, 1.0)


class _one_thread:
    """A linear layer's steps are microseconds of work: extra intra-op threads only add
    synchronisation (90 ms against 1.6 ms a step measured on a loaded 2-core machine)."""

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


@torch.no_grad()
def pooled_features(model, images, batch_size: int = 64) -> np.ndarray:
    """[N, C] pooled image features of the frozen encoder (before the projection head)."""
    was_training = model.training
    model.eval()
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    feats = [model.image_encoder(x[i:i + batch_size])["pooled"].float() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(feats).numpy() if feats else np.zeros((0, 1), np.float32)


def subset_indices(n: int, fraction: float, seed: int, min_size: int = 2) -> np.ndarray:
    """A seeded subset of round(fraction * n) rows (at least min_size), sorted."""
    k = min(n, max(min_size, int(round(fraction * n))))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _loss(logits, y, kind):
    if kind == "multiclass":
        return F.cross_entropy(logits, y.argmax(dim=1))
    return F.binary_cross_entropy_with_logits(logits, y)


def fit_linear(train_x, train_y, valid_x, valid_y, kind: str, lr: float = 5e-4, max_epochs: int = 500,
               patience: int = 20, batch_size: int = 32, seed: int = 0) -> tuple[torch.nn.Linear, dict]:
    """One linear layer; stops when the validation loss has not improved for `patience` epochs and
    keeps the best epoch's weights. Features are standardised by the training subset's statistics
    and the layer starts at zero, so the learned direction carries no noise of a random start.
    At lr 5e-4 Adam moves a weight about lr per step: small training sets need hundreds of epochs,
    hence the epoch bound; the validation loss decides when to stop."""
    with _one_thread():
        return _fit(train_x, train_y, valid_x, valid_y, kind, lr, max_epochs, patience, batch_size, seed)


def _fit(train_x, train_y, valid_x, valid_y, kind, lr, max_epochs, patience, batch_size, seed):
    torch.manual_seed(seed)
    xt, yt = torch.tensor(np.asarray(train_x), dtype=torch.float32), torch.tensor(np.asarray(train_y), dtype=torch.float32)
    xv, yv = torch.tensor(np.asarray(valid_x), dtype=torch.float32), torch.tensor(np.asarray(valid_y), dtype=torch.float32)
    mean, std = xt.mean(0, keepdim=True), xt.std(0, keepdim=True, unbiased=False).clamp_min(1e-6)
    layer = torch.nn.Linear(xt.shape[1], yt.shape[1])
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr)
    best, best_state, since, epoch = float("inf"), None, 0, 0
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, max_epochs + 1):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            b = order[i:i + batch_size]
            opt.zero_grad()
            _loss(layer((xt[b] - mean) / std), yt[b], kind).backward()
            opt.step()
        with torch.no_grad():
            v = float(_loss(layer((xv - mean) / std), yv, kind))
        if v < best - 1e-6:
            best, best_state, since = v, {k: t.clone() for k, t in layer.state_dict().items()}, 0
        else:
            since += 1
            if since >= patience:
                break
    layer.load_state_dict(best_state)
    probe = _Standardised(layer, mean, std)
    return probe, {"epochs": epoch, "best_valid_loss": best}


class _Standardised(torch.nn.Module):
    def __init__(self, layer, mean, std):
        super().__init__()
        self.layer, self.mean, self.std = layer, mean, std

    def forward(self, x):
        return self.layer((x - self.mean) / self.std)


def probe_scores(probe, x, kind: str) -> np.ndarray:
    with torch.no_grad():
        logits = probe(torch.as_tensor(x, dtype=torch.float32))
        return (logits.softmax(dim=1) if kind == "multiclass" else logits.sigmoid()).numpy()


def linear_probe(train: tuple, valid: tuple, test: tuple, classes: list[str], kind: str,
                 fractions=FRACTIONS, seed: int = 0, **fit_options) -> dict:
    """train/valid/test: (features [N,C], labels [N,K]). {"1%": {mean_auc, per_class, ...}, ...}."""
    out = {}
    for f in fractions:
        idx = subset_indices(len(train[0]), f, seed)
        probe, info = fit_linear(train[0][idx], train[1][idx], valid[0], valid[1], kind, seed=seed, **fit_options)
        res = summarise(test[1], probe_scores(probe, test[0], kind), classes)
        res.update(info, n_train=int(len(idx)))
        out[f"{f * 100:g}%"] = res
    return out
