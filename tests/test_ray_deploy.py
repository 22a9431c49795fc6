"""eaglex.server.ray_deploy without a Ray cluster: settings, deployment options, the replica header."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from eaglex.errors import EaglexError

ray_deploy = pytest.importorskip("eaglex.server.ray_deploy", reason="needs eaglex[ray] (ray[serve])")


@pytest.mark.parametrize(("text", "expected"), [("1:4", (1, 4)), ("0:2", (0, 2)), ("3:3", (3, 3))])
def test_parse_autoscale(text, expected) -> None:
    assert ray_deploy.parse_autoscale(text) == expected


@pytest.mark.parametrize("text", ["4", "4:1", "0:0", "a:b", "1:2:3", "-1:2"])
def test_parse_autoscale_refuses(text) -> None:
    with pytest.raises(EaglexError, match="--autoscale"):
        ray_deploy.parse_autoscale(text)


def test_fixed_replicas_get_a_cpu_per_thread_and_a_batch_each() -> None:
    options = ray_deploy.deployment_options(
        ray_deploy.ray_args(artifact="a", replicas=2, threads_per_replica=3, max_batch=4)
    )
    assert options["num_replicas"] == 2
    assert options["ray_actor_options"] == {"num_cpus": 3}
    assert options["max_ongoing_requests"] == 4
    assert "autoscaling_config" not in options


def test_autoscaling_targets_ongoing_requests() -> None:
    options = ray_deploy.deployment_options(ray_deploy.ray_args(artifact="a", autoscale="0:5", max_batch=8))
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 5,
        "initial_replicas": 1,
        "target_ongoing_requests": 4,
    }


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"replicas": 2, "autoscale": "1:2"}, "not both"),
        ({"replicas": 0}, "--replicas"),
        ({"threads_per_replica": 0}, "--threads-per-replica"),
        ({"autoscale": "2:1"}, "--autoscale"),
    ],
)
def test_bad_settings_are_one_line_errors(options, words) -> None:
    with pytest.raises(EaglexError, match=words):
        ray_deploy.ray_args(artifact="a", **options)


def test_replica_header_is_added_to_http_responses_only() -> None:
    sent: list[dict] = []

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]})
        await send({"type": "http.response.body", "body": b"x"})

    async def send(message: dict) -> None:
        sent.append(message)

    wrapped = ray_deploy.ReplicaHeader(app, "r1")
    asyncio.run(wrapped({"type": "http"}, None, send))
    assert sent[0]["headers"] == [(b"a", b"b"), (b"x-eaglex-replica", b"r1")]
    assert sent[1] == {"type": "http.response.body", "body": b"x"}
    sent.clear()
    asyncio.run(wrapped({"type": "lifespan"}, None, send))
    assert sent[0]["headers"] == [(b"a", b"b")]


def eaglex(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eaglex.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--replicas", "2"], "need --ray"),
        (["--ray", "--replicas", "2", "--autoscale", "1:2"], "not both"),
    ],
)
def test_cli_refuses_bad_ray_settings_before_starting_ray(args, words, tmp_path) -> None:
    result = eaglex("serve", str(tmp_path), *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Ray" not in result.stderr


def test_cli_checks_the_artifact_before_starting_ray(tmp_path) -> None:
    result = eaglex("serve", str(tmp_path / "missing"), "--ray")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0], result.stderr


def test_a_ray_address_nobody_answers_on_is_refused_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(EaglexError, match=f"--ray-address 127.0.0.1:{port}: no Ray head"):
            ray_deploy.check_address(f"127.0.0.1:{port}")
    for address in (None, "auto", "ray://head:10001"):
        ray_deploy.check_address(address)  # left to ray.init


def test_ray_tools_build_the_app_from_string_arguments() -> None:
    """`serve run eaglex.server.ray_deploy:build_app replicas=2 ...` and config files pass a dict of
    strings through Ray's own builder call."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    args = {"artifact": "/shared/a", "replicas": "2", "threads_per_replica": "3"}
    deployment = call_user_app_builder_with_args_if_necessary(ray_deploy.build_app, args)._bound_deployment
    assert deployment.num_replicas == 2 and deployment.ray_actor_options == {"num_cpus": 3}
    assert deployment.init_args[0] == ray_deploy.ray_args(
        artifact="/shared/a", replicas=2, threads_per_replica=3
    )
    with pytest.raises(EaglexError, match="--threads-per-replica"):
        call_user_app_builder_with_args_if_necessary(
            ray_deploy.build_app, {"artifact": "a", "threads_per_replica": "0"}
        )
