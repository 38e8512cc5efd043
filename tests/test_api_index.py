"""Contract of indexing over HTTP (api/indexing.py): ``POST /index`` answers 401 without the
token, 403 where the API has no token or no ``--index-root``, and for a path outside every root
(also through a symlink out of the root, or ``..``); 200 with the row written for a file, the
incremental report for a folder; ``GET /index/status`` says what runs. Real app on uvicorn, real
Milvus Lite, the tiny ViT, the example photos."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time

import httpx
import pytest
from conftest import EXAMPLES
from test_api import serving

from vitsearch.search.store import Store

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def served(indexed, tmp_path):
    photos, uri = indexed
    root = tmp_path / "root"
    root.mkdir()
    with serving(uri, token=TOKEN, index_roots=[str(root)]) as (base, app):
        yield base, root, uri


def post(base: str, path, headers=AUTH, timeout=60) -> httpx.Response:
    return httpx.post(f"{base}/index", json={"path": str(path)}, headers=headers, timeout=timeout)


@pytest.mark.slow
def test_guards_token_and_roots(served, tmp_path, indexed):
    base, root, _ = served
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(EXAMPLES / "images" / "cat.jpg", outside / "cat.jpg")
    (root / "link").symlink_to(outside)
    assert post(base, root, headers={}).status_code == 401
    assert post(base, root, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{base}/index/status").status_code == 401
    for path in (outside / "cat.jpg", root / "link" / "cat.jpg", root / ".." / "outside" / "cat.jpg", root / "link"):
        r = post(base, path)
        assert r.status_code == 403, (path, r.text)
        assert "outside every --index-root" in r.json()["detail"]
    assert post(base, "relative/cat.jpg").status_code == 400
    for hostile in (f"{root}/a\x00.jpg", f"{root}/\ud800.jpg"):  # a NUL byte, a lone surrogate: 400, never 500
        r = httpx.post(
            f"{base}/index", content=json.dumps({"path": hostile}), headers={**AUTH, "Content-Type": "application/json"}
        )
        assert r.status_code == 400 and "not a path" in r.json()["detail"], (hostile, r.text)
    assert post(base, root / "missing.jpg").status_code == 404


@pytest.mark.slow
def test_no_token_or_no_root_refuses(indexed, tmp_path):
    _, uri = indexed
    with serving(uri, index_roots=[str(tmp_path)]) as (base, _):
        r = post(base, tmp_path, headers={})
        assert r.status_code == 403 and "VITSEARCH_API_TOKEN" in r.json()["detail"]
    with serving(uri, token=TOKEN) as (base, _):
        r = post(base, tmp_path)
        assert r.status_code == 403 and "--index-root" in r.json()["detail"]


@pytest.mark.slow
def test_a_file_is_answered_with_its_row_and_a_folder_with_its_report(served):
    base, root, uri = served
    src = EXAMPLES / "images" / "cat.jpg"
    shutil.copy(src, root / "cat.jpg")
    r = post(base, root / "cat.jpg")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["path"] == str(root / "cat.jpg") and out["indexed"] == 1
    assert out["metadata"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    with Store(uri, "images") as store:
        assert str(root / "cat.jpg") in store.get([str(root / "cat.jpg")], fields=["sha256"])
    sub = root / "sub"
    shutil.copytree(EXAMPLES / "images", sub)
    (sub / "broken.jpg").write_text("not an image")
    r = post(base, root)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["indexed"] == len(list(sub.glob("*.jpg"))) - 1 and report["unchanged"] == 1
    assert report["failed"] == 1 and report["failures"][0]["path"] == str(sub / "broken.jpg")
    assert post(base, root).json()["indexed"] == 0  # incremental
    r = post(base, sub / "broken.jpg")
    assert r.status_code == 400
    status = httpx.get(f"{base}/index/status", headers=AUTH).json()
    assert status["running"] is False and status["last"]["path"] == str(sub / "broken.jpg")


@pytest.mark.slow
def test_status_while_a_folder_runs(served, linked_photos):
    base, root, _ = served
    many = linked_photos(20)
    shutil.move(str(many), root / "many")
    seen = []

    def watch_status():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            s = httpx.get(f"{base}/index/status", headers=AUTH).json()
            if s["running"]:
                seen.append(s)
            if s["last"] is not None:
                return
            time.sleep(0.02)

    t = threading.Thread(target=watch_status)
    t.start()
    r = post(base, root / "many")
    t.join()
    assert r.status_code == 200 and r.json()["indexed"] == 220
    assert seen and seen[0]["path"] == str(root / "many")
    assert max(s["done"] for s in seen) <= 220 and all(s["failed"] == 0 for s in seen)
