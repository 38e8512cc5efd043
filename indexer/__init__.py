"""Bulk indexing of image folders into a Milvus collection (:class:`IndexJob`, run by this
process's pipeline, :class:`LocalExecutor` and :func:`index_folder`, or on a Ray cluster,
:class:`~.ray_engine.RayExecutor` and :func:`~.ray_engine.index_with_ray`), and measuring
retrieval on a labelled set indexed so (:func:`evaluate`, ``vitsearch eval``)."""

from .evaluate import EvalReport, EvalResult, evaluate
from .job import IndexInterrupted, IndexJob, IndexReport, Progress
from .runner import LocalExecutor, index_folder

__all__ = [
    "index_folder",
    "IndexJob",
    "LocalExecutor",
    "IndexReport",
    "IndexInterrupted",
    "Progress",
    "evaluate",
    "EvalReport",
    "EvalResult",
]
