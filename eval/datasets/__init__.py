"""Evaluation datasets by name: `build_dataset(name, n=None, seed=0, **options) -> EvalSet`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from engine.core.errors import UserError

if TYPE_CHECKING:  # the registry is read by every `syncxr` start: no pandas or torch here
    from eval.datasets.base import EvalSet

TASKS = ("zero-shot", "grounding", "linear-probe", "segmentation")

# name -> (module, builder, tasks it supports, one line for --help)
DATASETS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "chexpert-5x200": ("eval.datasets.chexpert", "build", ("zero-shot",),
                       "CheXpert 5x200 (GLoRIA): 5 classes x 200 frontal images"),
    "chestxray14": ("eval.datasets.chestxray14", "build", ("zero-shot", "linear-probe"),
                    "NIH ChestX-ray14, 14 labels, patient split 70/15/15"),
    "padchest": ("eval.datasets.padchest", "build", ("zero-shot", "linear-probe"),
                 "PadChest, 15 common labels, patient split 70/15/15, 16-bit PNGs"),
    "rsna-pneumonia": ("eval.datasets.rsna", "build", ("zero-shot", "grounding", "linear-probe", "segmentation"),
                       "RSNA Pneumonia, boxes, patient split 70/15/15, DICOM"),
    "siim-pneumothorax": ("eval.datasets.siim", "build", ("zero-shot", "grounding", "linear-probe", "segmentation"),
                          "SIIM-ACR Pneumothorax, RLE masks, image split 70/15/15, DICOM"),
    "phantom-5x200": ("eval.datasets.phantom", "build_common", ("zero-shot", "grounding", "linear-probe", "segmentation"),
                      "phantom: the CheXpert five, n per class and split, with masks"),
    "phantom-rare": ("eval.datasets.phantom", "build_rare", ("zero-shot", "grounding", "linear-probe", "segmentation"),
                     "phantom: the six drawable findings rarest in IU X-ray, with masks"),
}


def builder(name: str) -> Callable[..., "EvalSet"]:
    import importlib

    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    module, attr, _, _ = DATASETS[name]
    return getattr(importlib.import_module(module), attr)


def build_dataset(name: str, n: int | None = None, seed: int = 0, **options) -> "EvalSet":
    """options: phantom sets take size=."""
    return builder(name)(n=n, seed=seed, **options)


def check_task(name: str, task: str) -> None:
    tasks = DATASETS[name][2] if name in DATASETS else ()
    if name in DATASETS and task not in tasks:
        raise UserError(f"dataset {name} does not support task {task!r} (it supports: {', '.join(tasks)})")
