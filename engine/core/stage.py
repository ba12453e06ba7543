"""The stage contract, and how a stage runs inside Ray Data.

Every model-backed backend (report writer, image drawer, embedder, judge) subclasses `Backend`:
it says its name, its typed options, which columns it reads and writes, and how it attaches to a
pipeline (`attach_mode`): "batch" is a callable class for `map_batches` (model loaded once per actor in
`__init__`, `__call__(batch)` maps a dict of numpy columns to a dict of columns); "dataset" is a
processor over a whole Ray Dataset (`ray.data.llm`). `check` runs on the driver before any actor
starts, so a bad option or model path is one clear error, not a dead actor. The engine finds a
backend only through its stage's Registry and never compares backend names.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

import numpy as np
from pydantic import BaseModel, ValidationError

from engine.core.errors import ConfigError


def validate_options(options_cls: type[BaseModel], options: Optional[dict], where: str, backend: str = "") -> Any:
    """`options` checked against a backend's options model; errors name the dotted field."""
    try:
        return options_cls.model_validate(dict(options or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(part) for part in err["loc"])
        named = f" (backend {backend!r})" if backend else ""
        raise ConfigError(f"{where}.options{'.' + field if field else ''}: {err['msg']}{named}") from None


class Backend:
    """Base of every backend. Subclasses set the class attributes and may override `check`."""

    name: ClassVar[str] = ""
    section: ClassVar[str] = ""  # the config section it serves: "reports", "images", "qc.embedder", ...
    Options: ClassVar[Optional[type[BaseModel]]] = None  # typed `options`, extra keys forbidden
    attach_mode: ClassVar[Literal["batch", "dataset"]] = "batch"
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def options_of(cls, options: Optional[dict]) -> Any:
        """The validated options (a model instance), or the plain dict when the backend has none."""
        if cls.Options is None:
            return dict(options or {})
        return validate_options(cls.Options, options, cls.section, cls.name)

    @classmethod
    def check(cls, section, cfg=None) -> None:
        """Driver-side validation of this backend's config section (raise UserError/ConfigError)."""
        cls.options_of(getattr(section, "options", None))


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
    if resources.custom:
        kwargs["resources"] = dict(resources.custom)
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
