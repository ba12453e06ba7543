"""Training data: adapters (sources), mixing (pure), decoding once (Ray Data), the in-memory cache a
worker iterates, and the pipeline that
turns a training config into the "train" and "val" Ray Datasets."""
from train.data.mixing import choose_mix, split_validation
from train.data.pipeline import DataPlan, DecodedData, build_datasets, load_sources, plan_data
from train.data.sources import ROW_SCHEMA, Source, real_source, synthetic_source

__all__ = ["ROW_SCHEMA", "DataPlan", "DecodedData", "Source", "build_datasets", "choose_mix", "load_sources", "plan_data",
           "real_source", "split_validation", "synthetic_source"]
