"""Bulk indexing of image folders into a Milvus collection (:func:`index_folder`, locally, or
:func:`~.ray_engine.index_with_ray` on a Ray cluster), and measuring retrieval on a labelled set
indexed so (:func:`evaluate`, ``vitsearch eval``)."""

from .evaluate import EvalReport, EvalResult, evaluate
from .runner import IndexInterrupted, IndexReport, Progress, index_folder

__all__ = ["index_folder", "IndexReport", "IndexInterrupted", "Progress", "evaluate", "EvalReport", "EvalResult"]
