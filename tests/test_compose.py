"""docker-compose.yml, docker-compose.gpu.yml and the Dockerfile, checked without a Docker
engine (none runs here): the services of Milvus's standalone stack plus the page and the HTTP API, images pinned,
healthchecks, start order on health, named volumes, ports on localhost, the app's environment;
the Dockerfile installs as the README does and serves the page by default."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import REPO


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_images_and_healthchecks(compose):
    services = compose["services"]
    assert set(services) == {"etcd", "minio", "standalone", "app", "api"}
    for name, svc in services.items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image} is not pinned"
        assert svc["healthcheck"]["test"][0] == "CMD", name
    assert re.fullmatch(r"milvusdb/milvus:v2\.[56]\.\d+", services["standalone"]["image"])
    assert "9091/healthz" in " ".join(services["standalone"]["healthcheck"]["test"])
    assert services["app"]["build"] == "."


def test_start_order_waits_for_health(compose):
    services = compose["services"]
    assert services["standalone"]["depends_on"] == {
        "etcd": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
    }
    assert services["app"]["depends_on"] == {"standalone": {"condition": "service_healthy"}}
    assert services["api"]["depends_on"]["standalone"] == {"condition": "service_healthy"}
    env = services["standalone"]["environment"]
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"


def test_volumes_ports_and_the_apps_environment(compose):
    services = compose["services"]
    named = set(compose["volumes"])
    used = {v.split(":")[0] for svc in services.values() for v in svc.get("volumes", [])}
    assert {"etcd", "minio", "milvus", "models"} <= named and named <= used
    app = services["app"]
    assert app["environment"]["VITSEARCH_URI"] == "http://standalone:19530"
    assert any(v.endswith(":/images:ro") for v in app["volumes"])  # the photos to index
    assert "models:/vitsearch" in app["volumes"] and app["environment"]["VITSEARCH_DATA_DIR"] == "/vitsearch"
    assert app["ports"] == ["127.0.0.1:8501:8501"]
    assert "127.0.0.1:19530:19530" in services["standalone"]["ports"]


def test_the_api_serves_the_same_collection_beside_the_page(compose):
    app, api = compose["services"]["app"], compose["services"]["api"]
    assert api["image"] == app["image"] and "build" not in api  # one image, built once by the app service
    assert api["command"] == ["vitsearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert {k: api["environment"][k] for k in app["environment"]} == app["environment"]
    assert api["environment"]["VITSEARCH_API_TOKEN"] == "${VITSEARCH_API_TOKEN:-}"
    assert api["ports"] == ["127.0.0.1:8000:8000"]  # localhost only, like the page
    assert "8000/healthz" in " ".join(api["healthcheck"]["test"])
    assert set(api["volumes"]) == set(app["volumes"])  # the indexed files, for thumbnails


def test_gpu_is_an_optional_override():
    gpu = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())
    for service in ("app", "api"):
        devices = gpu["services"][service]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_dockerfile_installs_like_the_readme_and_serves_the_page():
    docker = (REPO / "Dockerfile").read_text()
    readme_install = re.search(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S).group(1)
    assert "pip install torch==2.13.0" in readme_install and "torch==2.13.0" in docker
    assert docker.index("torch==2.13.0") < docker.index("pip install --no-cache-dir .")  # torch first
    import tomllib

    mapped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    folders = {path.split("/")[0] for path in mapped.values()}
    assert {"search", "indexer", "ui", "cli", "train", "api"} <= folders
    for folder in folders:  # the packages pyproject.toml maps
        assert f"COPY {folder} {folder}" in docker
    assert 'CMD ["vitsearch", "ui", "--host", "0.0.0.0", "--port", "8501"]' in docker
    assert "EXPOSE 8501 8000" in docker
