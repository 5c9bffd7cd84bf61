"""Task-centric evaluation of vector search (Iceberg-style): judge an index by what it does to the downstream
task, not only by recall. See vdb/eval/README.md for the module map and docs/evaluation.md for results."""
from vdb.eval.datasets import EvalDataset, load_dataset, synthetic_dataset
from vdb.eval.errors import EvalDatasetError, SweepSpecError
from vdb.eval.funnel import Funnel, build_funnel, saturation_point
from vdb.eval.metafeatures import MetaFeatures, compute_metafeatures
from vdb.eval.recommend import Recommendation, RecommendationCheck, check_recommendation, iceberg_tree, recommend
from vdb.eval.runner import EvalConfig, EvalResult, run_eval

__all__ = ["EvalConfig", "EvalDataset", "EvalDatasetError", "EvalResult", "Funnel", "MetaFeatures",
           "Recommendation", "RecommendationCheck", "SweepSpecError", "build_funnel",
           "check_recommendation", "compute_metafeatures", "iceberg_tree", "load_dataset", "recommend", "run_eval",
           "saturation_point", "synthetic_dataset"]
