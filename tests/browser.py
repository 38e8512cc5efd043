"""A real `vitsearch ui` server and a real headless Chromium, for the browser test and the UI
benchmark. Chromium is Debian's (`apt-get install chromium chromium-driver`, done by .ci/run),
driven by Playwright for Python; no browser is ever downloaded."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = Path(os.environ.get("VITSEARCH_CHROMIUM", "/usr/bin/chromium"))
# Headless, and nothing that reaches out to Google's services (the network is closed here).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
#: A result cell's thumbnail, as Streamlit renders st.image.
THUMBNAILS = "[data-testid=stImage] img"
#: The file name under each result thumbnail (plain text, st.text, in each grid cell).
RESULT_NAMES = "[data-testid=stColumn] [data-testid=stText]"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ui_server(uri: str, log: Path, *options: str, timeout_s: float = 120) -> Iterator[str]:
    """Run ``vitsearch ui --uri URI [options]`` on a free localhost port; yield its base URL."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from vitsearch.cli import main; main()",
                "ui",
                "--uri",
                uri,
                "--port",
                str(port),
                *options,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vitsearch ui exited with {proc.returncode}: {log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vitsearch ui did not answer within {timeout_s} s: {log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def chromium_page(width: int = 1400, height: int = 1100):
    """A Playwright page in Debian's headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def result_names(page) -> list[str]:
    """File names under the result thumbnails, in order (each cell's text)."""
    return page.eval_on_selector_all(RESULT_NAMES, "cells => cells.map(c => c.innerText)")


def results_shown(page, first: str, count: int | None = None, timeout_ms: float = 120_000) -> None:
    """Wait until the grid is complete: ``first`` is the first result, there are as many cells
    as the "N results in … ms" caption says (and ``count``, if given), every thumbnail loaded, and
    no element is left from the previous run (Streamlit's ``data-stale``)."""
    page.wait_for_function(
        """([first, count, names, thumbs]) => {
            const caption = [...document.querySelectorAll('[data-testid=stCaptionContainer]')]
                .map(c => c.innerText.match(/^(\\d+) results? in/)).find(m => m);
            if (!caption) return false;
            if (document.querySelector('[data-stale=true]')) return false;  // a rerun still drawing
            const n = Number(caption[1]);
            if (count !== null && n !== count) return false;
            const cells = [...document.querySelectorAll(names)];
            const imgs = [...document.querySelectorAll(thumbs)];
            return cells.length === n && n > 0 && cells[0].innerText === first && imgs.length >= n
                && imgs.every(i => i.complete && i.naturalWidth > 0);
        }""",
        arg=[first, count, RESULT_NAMES, THUMBNAILS],
        timeout=timeout_ms,
    )


def upload_and_wait(page, photo: Path, timeout_ms: float = 120_000) -> float:
    """Upload ``photo`` (an indexed file, so it comes first) and wait for the whole grid.
    Returns the seconds from upload to results shown."""
    started = time.perf_counter()
    page.set_input_files("[data-testid=stFileUploaderDropzone] input[type=file]", str(photo))
    results_shown(page, photo.name, timeout_ms=timeout_ms)
    return time.perf_counter() - started
