"""The one configuration schema of syncxr, read from YAML.

Every stage reads its section from here; errors name the file and the dotted field.
Relative paths inside a config resolve against the config file's directory.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.core.errors import ConfigError
from engine.core.yaml_file import read_yaml

# Shipped as package data (the checkout's configs/ is a link to it), so an installed syncxr has them.
PACKAGED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = PACKAGED_CONFIGS / "local.yaml"
# every package keeps the configs it reads beside it (package data); engine's come first. A path,
# not an import: the engine finds train's and workflows' files without importing their code.
CONFIG_DIRS = (PACKAGED_CONFIGS, PACKAGED_CONFIGS.parent.parent / "train" / "configs",
               PACKAGED_CONFIGS.parent.parent / "workflows" / "configs")


def _packaged(p: Path) -> Path | None:
    parts = p.parts[1:] if p.parts and p.parts[0] == "configs" else p.parts
    for root in CONFIG_DIRS if parts else ():
        found = root.joinpath(*parts)
        if found.is_file():
            return found
    return None


def find_config_file(path: str | Path) -> Path:
    """`path` as given, else the packaged file of that name ("configs/local.yaml" works anywhere:
    engine/configs, train/configs, workflows/configs)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    return _packaged(p) or p


def beside(config_file: str | Path, named: str | Path) -> Path:
    """A file a config names (a tune file's train_config, an experiment's synth_config): absolute as
    given, else relative to the naming file's directory, else the packaged config of that name."""
    p = Path(named).expanduser()
    if p.is_absolute():
        return p
    local = Path(config_file).resolve().parent / p
    return local if local.exists() else (_packaged(p) or local)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ScalingSection(Section):
    """Ray Train workers; each runs torch on cpus_per_worker threads (rounded, at least one)."""

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    accelerator_type: Optional[str] = None
    resources: dict[str, float] = Field(default_factory=dict)  # extra custom resources per worker

    def per_worker(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker, **self.resources}
        if self.use_gpu:
            res["GPU"] = self.gpus_per_worker or 1.0
        return res


class StageResources(Section):
    """Ray resources of one stage. Fractional CPUs by default: on a 2-CPU machine an actor pool
    that takes every CPU starves the read tasks and hangs."""

    num_cpus: float = Field(0.5, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(1, ge=1)
    accelerator_type: Optional[str] = None
    # custom Ray resources a node group declares (cluster.yaml), e.g. {"diffusion_group": 1}
    custom: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _pool_bounds(self) -> "StageResources":
        if self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) < min_actors ({self.min_actors})")
        return self


class CorpusConfig(Section):
    """Where real reports come from. `iu-xray` is shipped by torchxrayvision; the others read
    `path`: a MIMIC-CXR `files/` tree, or a CSV/JSONL file with a text column."""

    name: Literal["iu-xray", "mimic-cxr", "csv", "jsonl"] = "iu-xray"
    path: Optional[str] = None
    text_column: str = "text"
    id_column: Optional[str] = None
    limit: Optional[int] = Field(None, ge=1)


class ExtractorConfig(Section):
    backend: str = "lexicon"
    model: Optional[str] = None  # local directory or hub id (transformers backend)
    lexicon: Optional[str] = None  # a custom lexicon YAML; default: the packaged one
    batch_size: int = Field(32, ge=1)
    device: str = "cpu"


class PlanConfig(Section):
    """Balanced entity sampling. The paper does not publish k, m or tau_max; the README explains
    these defaults (k and m follow the IU X-ray per-report medians; tau_max is relative)."""

    k: int = Field(4, ge=1)  # clinical entities per sample (the four non-anatomy types)
    m: int = Field(2, ge=0)  # anatomy entities per sample
    tau_max: Optional[int] = Field(None, ge=1)  # absolute cap; None: tau_factor x fair share
    tau_factor: float = Field(1.1, ge=1.0)
    # how the slots are shared: even (every entity the same share, whatever the cap) or frequency
    # (in proportion to the corpus counts, as a frequency-weighted draw that stops drawing an
    # entity at the cap would give: the cap flattens the head, a large one leaves the long tail)
    weighting: Literal["even", "frequency"] = "even"
    min_count: int = Field(3, ge=1)  # vocabulary: corpus entities seen at least this often
    seed: int = 0
    exclusive_pairs: list[tuple[str, str]] = Field(default_factory=list)
    # balanced: the sampler above; corpus: one sample per corpus report, with that report's own
    # entities (the "real-like" arm of `syncxr experiment`: real texts and their long tail)
    mode: Literal["balanced", "corpus"] = "balanced"
    # balanced plan over only the present findings the configured image backend can draw
    # (phantom: its keyword rules; a text-to-image model draws any text); negated and anatomy
    # entities stay, since an image shows an absence whatever the backend
    drawable_only: bool = False

    @model_validator(mode="after")
    def _drawable_needs_balanced(self):
        if self.drawable_only and self.mode != "balanced":
            raise ValueError("drawable_only restricts the balanced plan's vocabulary; mode 'corpus' keeps "
                             "each report's own entities")
        return self


class StageBackend(Section):
    backend: str
    model: Optional[str] = None
    resources: StageResources = Field(default_factory=StageResources)
    options: dict[str, Any] = Field(default_factory=dict)  # backend-specific settings


class SamplingConfig(Section):
    """Decoding settings shared by the LLM report backends (transformers, vllm, openai)."""

    temperature: float = Field(0.7, ge=0)  # 0: greedy
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)  # new tokens per candidate


class ReportsConfig(StageBackend):
    backend: str = "template"
    prompt: str = "prompts/report_v1.yaml"
    num_candidates: int = Field(3, ge=1)
    tolerance: int = Field(0, ge=0)  # entities that may differ before a candidate is rejected
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)


class ImagesConfig(StageBackend):
    backend: str = "phantom"
    size: int = Field(256, ge=32)
    steps: int = Field(75, ge=1)
    guidance: float = 4.0


class IndexConfig(Section):
    """FAISS search behind the QC filters (inner product on L2-normalised vectors = cosine)."""

    exact_max: int = Field(50_000, ge=1)  # exact (flat) search up to this many vectors
    kind: Literal["ivf", "ivfpq", "hnsw"] = "ivf"  # approximate index above exact_max
    nlist: Optional[int] = Field(None, ge=1)  # IVF cells; None: about 2*sqrt(n)
    nprobe: int = Field(16, ge=1)
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(64, ge=1)  # raised to k when a search asks for more neighbours
    hnsw_ef_construction: int = Field(40, ge=1)
    # a multi-threaded HNSW build depends on thread timing; one thread makes the graph (and so
    # the kept set of an approximate dedup) reproducible, at about twice the build time
    hnsw_reproducible: bool = True
    k: int = Field(16, ge=1)  # first neighbour count of a threshold search (grows when all pass)
    query_chunk: int = Field(1024, ge=1)  # queries per faiss call (HNSW aborts on large calls)
    use_gpu: Literal["auto", "never", "always"] = "auto"
    pq_m: int = Field(96, ge=1)  # ivfpq: sub-quantizers (bytes per vector); must divide the dimension
    refine_k: int = Field(16, ge=1)  # ivfpq: candidates re-scored exactly against the raw vectors
    # near-duplicate removal above exact_max: "cluster" (k-means cells, all pairs inside each cell,
    # engine/qc/cluster_dedup.py) or "index" (a threshold search of every vector in `kind`)
    dedup_method: Literal["cluster", "index"] = "cluster"
    dedup_cells: Optional[int] = Field(None, ge=1)  # k-means cells; None: dedup_cells_per_sqrt * sqrt(n)
    dedup_cells_per_sqrt: float = Field(4.6, gt=0)
    # a vector's home cell plus the cells whose boundary with it lies within dedup_spill_radius x
    # the threshold's chord distance, at most dedup_cells_per_vector in all (cluster_dedup.py)
    dedup_spill_radius: float = Field(0.25, ge=0, le=1)
    dedup_cells_per_vector: int = Field(12, ge=1, le=64)
    dedup_train_per_cell: int = Field(20, ge=1)  # k-means sample: cells x this many rows
    dedup_kmeans_iters: int = Field(5, ge=1)
    # the cell space: the top principal directions (0: the full space); pairs are filtered there
    # and re-scored in the full space, so it costs no recall
    dedup_project_dim: int = Field(128, ge=0)
    dedup_seed: int = 1234
    # working memory of the in-process cluster path beyond the input (cluster_dedup.py): half for
    # the stored float16 projection (projected per cell instead when it does not fit), an eighth
    # for the cell memberships (sorted in passes of cells); the cells being compared come on top
    dedup_memory_mb: int = Field(1024, ge=1)


class QCConfig(Section):
    embedder: StageBackend = Field(default_factory=lambda: StageBackend(backend="pixels"))
    judge: StageBackend = Field(default_factory=lambda: StageBackend(backend="rules"))
    bank: Optional[str] = None  # directory written by `syncxr qc-bank`
    reference_threshold: float = Field(0.5, ge=-1, le=1)
    dedup_threshold: float = Field(0.97, ge=-1, le=1)
    privacy_images: Optional[str] = None
    privacy_threshold: float = Field(0.97, ge=-1, le=1)
    index: IndexConfig = Field(default_factory=IndexConfig)


class RaySection(Section):
    """Where a command's Ray runs: the `engine` section of every config (synth, train, tune)."""

    address: Optional[str] = None  # Ray address; None: RAY_ADDRESS or an embedded local Ray
    num_cpus: Optional[int] = Field(None, ge=1)  # embedded Ray only


class EngineConfig(RaySection):
    max_rounds: int = Field(3, ge=1)
    max_error_fraction: float = Field(0.05, ge=0, le=1)
    # a retry round this small runs its CPU stages in the driver: actor start-up would cost more
    inline_max_rows: int = Field(64, ge=0)


class SyncxrConfig(Section):
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    extractor: ExtractorConfig = Field(default_factory=ExtractorConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    reports: ReportsConfig = Field(default_factory=ReportsConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    qc: QCConfig = Field(default_factory=QCConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    # Directory of the YAML file this came from; relative paths resolve against it.
    base_dir: Optional[str] = Field(None, exclude=True)

    def resolve(self, path: Optional[str]) -> Optional[Path]:
        if path is None:
            return None
        p = Path(path).expanduser()
        if p.is_absolute() or self.base_dir is None:
            return p
        return Path(self.base_dir) / p

    def digest(self) -> str:
        """Stable hash of the settings (for manifests and resume checks)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def parse_config(data: Any, source: str = "<config>", base_dir: Optional[str] = None) -> SyncxrConfig:
    cfg = validate_model(data, SyncxrConfig, source)
    cfg.base_dir = base_dir
    return cfg


def validate_model(data: Any, model_cls: type[BaseModel], source: str) -> Any:
    """Validate a parsed YAML mapping against a schema; errors name the file and the dotted field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{source}: field '{_field_path(err['loc'])}': {err['msg']}{more}") from None


def load_yaml_model(path: str | Path, model_cls: type[BaseModel], what: str = "config") -> tuple[Any, Path]:
    """Read a YAML file into any schema built from `Section` (training and evaluation configs):
    the same lookup, YAML errors and field errors as the engine config. Returns (model, path)."""
    path = find_config_file(path)
    return validate_model(read_yaml(path, what, ConfigError), model_cls, str(path)), path


def load_config(path: str | Path | None = None, overrides: Optional[dict] = None) -> SyncxrConfig:
    """Read a YAML config (default: configs/local.yaml); `overrides` is a nested dict merged on top."""
    path = find_config_file(path) if path is not None else DEFAULT_CONFIG
    data = read_yaml(path, "config", ConfigError)
    if overrides:
        data = deep_merge(data or {}, overrides)
    return parse_config(data, source=str(path), base_dir=str(path.resolve().parent))


def deep_merge(base: dict, top: dict | None, strict: bool = False, where: str = "") -> dict:
    """A copy of `base` with `top` over it, mappings merged key by key (the one merge of configs,
    overrides and per-trial values). strict: a key of `top` that `base` lacks is a ConfigError
    naming its path."""
    import copy

    out = copy.deepcopy(base)
    for key, value in (top or {}).items():
        path = f"{where}.{key}" if where else str(key)
        if strict and key not in out:
            raise ConfigError(f"{path}: unknown setting (known here: {', '.join(sorted(map(str, out)))})")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, strict, path)
        else:
            out[key] = copy.deepcopy(value)
    return out
