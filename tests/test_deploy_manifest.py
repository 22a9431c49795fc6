"""deploy/kuberay-rayservice.yaml: a RayService whose Serve config names real code and the CLI's settings.

Parsed here, never applied: there is no Kubernetes cluster on these machines (docs/DEPLOY.md)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kuberay-rayservice.yaml"


@pytest.fixture(scope="module")
def service() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def application(service) -> dict:
    config = yaml.safe_load(service["spec"]["serveConfigV2"])  # KubeRay takes it as a YAML string
    (app,) = config["applications"]
    return app


def test_is_a_rayservice_with_a_cluster(service) -> None:
    assert service["apiVersion"] == "ray.io/v1"
    assert service["kind"] == "RayService"
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8000}
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    worker = workers["template"]["spec"]["containers"][0]
    assert worker["image"] == head["image"]
    mounts = {m["name"] for m in worker["volumeMounts"]}
    assert mounts <= {v["name"] for v in workers["template"]["spec"]["volumes"]}


def test_import_path_names_the_application_builder(application) -> None:
    module, attr = application["import_path"].split(":")
    assert module == "eaglex.server.ray_deploy"
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())  # read, not imported: ray may be absent
    builders = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == attr]
    assert builders and len(builders[0].args.args) == 1  # Ray Serve builders take one argument
    assert application["route_prefix"] == "/"


def test_args_are_the_cli_options(application, service) -> None:
    from eaglex.cli import main

    args = application["args"]
    command = main.get_command(None, "serve")
    assert command is not None, "eaglex serve is not registered"
    options = {p.name for p in command.params}
    assert set(args) <= options | {"artifact"}
    assert "ray" in options
    # And Ray builds the application from them as KubeRay will, through the CLI's validation.
    ray_deploy = pytest.importorskip("eaglex.server.ray_deploy", reason="needs eaglex[ray]")
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    app = call_user_app_builder_with_args_if_necessary(ray_deploy.build_app, args)
    parsed = app._bound_deployment.init_args[0]
    assert parsed == ray_deploy.ray_args(**args)
    low, high = ray_deploy.parse_autoscale(parsed.autoscale)
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    cpus = int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert cpus == parsed.threads_per_replica  # one replica per worker pod
    assert workers["maxReplicas"] == high and workers["minReplicas"] == max(low, 1)


def test_image_is_built_on_the_ray_version_the_cluster_runs(service) -> None:
    base = next(
        line for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines() if line.startswith("FROM")
    )
    assert base.split(":")[1].startswith(service["spec"]["rayClusterConfig"]["rayVersion"] + "-")
