"""Evaluation of pretrained ConVIRT/GLoRIA models (SynCXR's protocol, after GLoRIA and MGCA).

- eval.zero_shot.zero_shot_classification(model, images, labels, classes, kind): per-class
  AUC/F1/accuracy and their means; eval.validation.phantom_zero_shot: the training loop's hook.
- eval.grounding, eval.linear_probe, eval.segmentation: the other three tasks.
- eval.datasets.build_dataset(name, n, seed): CheXpert 5x200, ChestX-ray14, PadChest, RSNA,
  SIIM (from torchxrayvision's shipped label files) and phantom sets with masks;
  eval.datasets.chexpert.excluded_paths(): the 5x200 images a CheXpert training split must drop.
- eval.evaluate.evaluate(checkpoints, dataset, task, out): what `syncxr eval` runs.
"""
