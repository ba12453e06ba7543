"""How a stage runs inside Ray Data: a callable class (model loaded once per actor in __init__,
`__call__(batch)` maps a dict of numpy columns to a dict of columns) applied with the stage's
configured resources. Also the small conversions every stage needs on numpy batches."""
from __future__ import annotations

from typing import Any

import numpy as np


def map_stage(ds, stage_cls, resources, fn_constructor_kwargs: dict[str, Any] | None = None):
    """Apply `stage_cls` to a ray.data.Dataset with an actor pool sized from StageResources."""
    import ray.data

    kwargs: dict[str, Any] = dict(
        fn_constructor_kwargs=fn_constructor_kwargs or {},
        batch_size=resources.batch_size,
        num_cpus=resources.num_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=resources.min_actors, max_size=resources.max_actors),
        batch_format="numpy",
    )
    if resources.num_gpus:
        kwargs["num_gpus"] = resources.num_gpus
    if resources.accelerator_type:
        kwargs["accelerator_type"] = resources.accelerator_type
    return ds.map_batches(stage_cls, **kwargs)


def entity_lists(column) -> list[list[dict]]:
    """A batch's `entities` column (object array of arrays of dicts, or lists) as plain lists."""
    return [[{"text": str(e["text"]), "type": str(e["type"])} for e in (row if row is not None else [])]
            for row in column]


def object_column(values: list) -> np.ndarray:
    """A 1-d object array (np.array would try to stack equal-length lists into 2-d)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
