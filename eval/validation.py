"""Zero-shot AUC as the validation metric of `syncxr train` and `syncxr tune`: a hook for
`validation.zero_shot: phantom` (train/hooks.py registers it by this path). It scores the model on a small,
fixed phantom set (the five common findings: the validation split, never the test split that final
scores use, since Tune's ASHA selects on it), drawn once per process and reused every epoch."""
from __future__ import annotations

from functools import lru_cache


PER_CLASS = 20  # test images per class: 100 in all, a few seconds per epoch on a CPU


@lru_cache(maxsize=4)
def _frames(image_size: int, resize_to: int, per_class: int):
    from eval.datasets import build_dataset
    from eval.loading import load_rows
    from train.models.frame import to_input

    ds = build_dataset("phantom-5x200", n=per_class, seed=0)  # drawn as `syncxr eval` draws them
    rows = ds.split("valid")
    x, _, _ = load_rows(ds, rows, None, image_size, resize_to, with_masks=False)
    return to_input(x), ds.labels(rows), list(ds.classes)


def phantom_zero_shot(model, device, train_config=None, per_class: int = PER_CLASS) -> dict:
    """{val_zero_shot_auc, val_zero_shot_acc} of `model` on the phantom five-finding validation split."""
    import torch

    from eval.zero_shot import zero_shot_classification

    images, labels, classes = _frames(model.image_size, model.resize_to, per_class)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            res = zero_shot_classification(model, images, labels, classes, "multiclass", batch_size=50)
    finally:
        model.train(was_training)
    return {"val_zero_shot_auc": float(res["mean_auc"]),
            "val_zero_shot_acc": float(res["multiclass_accuracy"])}


phantom_zero_shot.metrics = ("val_zero_shot_auc", "val_zero_shot_acc")  # checked against validation.metric
