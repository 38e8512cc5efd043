"""Contract of search/application.py and of the library's imports: importing the library (store,
client, encoder, images, metrics) changes no process-wide state; an application's
:func:`configure` quiets the third-party logs and warnings whose content vitsearch's errors
carry, leaves Milvus Lite's storage warnings shown, and Pillow's guard follows a raised pixel
limit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

STATE = """
import json, logging, os, warnings
from PIL import Image
def state():
    import transformers
    return {"loggers": {n: logging.getLogger(n).level for n in ("pymilvus", "milvus_lite.adapter", "grpc._server")},
            "lite": logging.getLogger("milvus_lite.storage.manifest").getEffectiveLevel(),
            "filters": len(warnings.filters), "pil": Image.MAX_IMAGE_PIXELS,
            "env": {k: os.environ.get(k) for k in ("GRPC_VERBOSITY", "TRANSFORMERS_VERBOSITY")},
            "transformers": transformers.utils.logging.get_verbosity()}
"""


def run(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STATE + code],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            k: v for k, v in __import__("os").environ.items() if k not in ("GRPC_VERBOSITY", "TRANSFORMERS_VERBOSITY")
        },
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_importing_the_library_changes_no_process_wide_state():
    got = run(
        "import pymilvus, torch, transformers, milvus_lite.server_manager  # their own import-time state\n"
        "before = state()\n"
        "import vitsearch.search.store, vitsearch.search.client, vitsearch.search.encoder\n"
        "import vitsearch.search.images, vitsearch.search.metrics, vitsearch.indexer\n"
        "print(json.dumps([before, state()]))"
    )
    before, after = got
    assert before == after


@pytest.mark.slow
def test_configure_quiets_third_party_logs_and_follows_a_raised_pixel_limit():
    before, after = run(
        "before = state()\n"
        "from vitsearch.search.application import configure\n"
        "from vitsearch.search.config import Settings\n"
        "configure(Settings(max_image_pixels=500_000_000))\n"
        "print(json.dumps([before, state()]))"
    )
    assert all(level == 50 for level in after["loggers"].values()) and after["loggers"] != before["loggers"]
    assert after["lite"] == 30  # Milvus Lite's storage warnings (a manifest it falls back from) are shown
    assert after["pil"] == 500_000_000 and after["filters"] > before["filters"]
    assert after["env"]["GRPC_VERBOSITY"] == "ERROR"


@pytest.mark.slow
def test_configure_holds_whatever_is_imported_after_it():
    """pymilvus sets its loggers up when first imported (dictConfig): configure() called first,
    as the page and the commands do, must still leave them quiet."""
    _, after = run(
        "before = state()\n"
        "from vitsearch.search.application import configure\n"
        "configure()\n"
        "import pymilvus, vitsearch.search.store\n"
        "print(json.dumps([before, state()]))"
    )
    assert all(level == 50 for level in after["loggers"].values()), after["loggers"]


def test_a_milvus_lite_background_failure_is_one_line():
    """Lite logs a failed background compaction with its traceback (and retries at the next
    flush): the user gets the message and the exception's line, not the traceback."""
    code = (
        "from vitsearch.search.application import configure\nconfigure()\nimport logging\n"
        "try:\n    raise OSError(28, 'No space left on device')\nexcept OSError:\n"
        "    logging.getLogger('milvus_lite.engine.collection').exception("
        "'background compaction/index build failed; will retry on next flush')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0
    assert out.stderr.strip() == (
        "background compaction/index build failed; will retry on next flush: "
        "OSError: [Errno 28] No space left on device"
    )
