"""The chart's CRDs are the repository's ``crds/`` (generated from the pydantic models), unchanged.

The chart carries byte-identical copies in ``crds-src/`` (a chart must be self-contained to be
packaged); ``templates/crds.yaml`` adds only labels and the keep annotation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helm.chart import CHART, REPO, SCENARIOS, Manifest, find

SOURCE = REPO / "crds"
COPIES = CHART / "crds-src"
RESYNC = (
    "the chart's CRDs are out of date; re-sync them with:\n"
    "    rm -f deploy/helm/choreo-dp/crds-src/*.yaml && cp crds/*.yaml deploy/helm/choreo-dp/crds-src/\n"
    "(or regenerate both: `choreo-dp crds --output-dir crds && choreo-dp crds --output-dir deploy/helm/choreo-dp/crds-src`)"
)


def yaml_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.yaml"))}


def test_chart_copies_are_identical_to_crds_dir() -> None:
    source = yaml_files(SOURCE)
    assert source, "crds/ is empty"
    copies = yaml_files(COPIES)
    assert sorted(copies) == sorted(source), RESYNC
    for name, content in source.items():
        assert copies[name] == content, f"{name} differs. {RESYNC}"


def rendered_crds(scenario: str) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in find(SCENARIOS[scenario].render(), "CustomResourceDefinition")}


def test_rendered_crds_have_the_source_content() -> None:
    """The round trip through fromYaml/toYaml changes nothing but the metadata the chart adds."""
    rendered = rendered_crds("defaults")
    sources = [yaml.safe_load(p.read_text()) for p in sorted(SOURCE.glob("*.yaml"))]
    assert sorted(rendered) == sorted(s["metadata"]["name"] for s in sources)
    for source in sources:
        crd = rendered[source["metadata"]["name"]]
        labels = crd["metadata"].pop("labels")
        annotations = crd["metadata"].pop("annotations")
        src_labels = source["metadata"].pop("labels", {})
        assert src_labels.items() <= labels.items()
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert annotations == {"helm.sh/resource-policy": "keep"}
        assert crd == source, f"{source['metadata']['name']}: rendered content differs from crds/"


def test_keep_annotation_follows_crds_keep() -> None:
    for crd in rendered_crds("crds-not-kept").values():
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_crds_install_false_renders_none() -> None:
    assert rendered_crds("no-crds") == {}
    assert len(rendered_crds("defaults")) == 3


def test_chart_has_no_helm_crds_dir() -> None:
    """Helm's special crds/ directory is install-only and never upgraded; the chart must not use it."""
    assert not (CHART / "crds").exists()


@pytest.mark.parametrize("plural", ["environments", "choreoapps", "dataplanes"])
def test_every_choreo_kind_is_shipped(plural: str) -> None:
    assert f"{plural}.choreo.dev" in rendered_crds("defaults")
