"""Bulk indexing of image folders into a Milvus collection (see :func:`index_folder`)."""
from .runner import IndexInterrupted, IndexReport, Progress, encoder_for, index_folder

__all__ = ["index_folder", "encoder_for", "IndexReport", "IndexInterrupted", "Progress"]
