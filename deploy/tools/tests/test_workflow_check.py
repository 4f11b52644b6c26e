"""The workflow consistency check (deploy/tools/workflow-check.py) against this repository and
against copies of it broken the ways that broke CI before: a missing file, a missing make target,
an image built from another file. Run by `make workflow-lint`."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("workflow_check", ROOT / "deploy/tools/workflow-check.py")
workflow_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workflow_check)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A copy of the tracked files of this repository (template/ aside: it is big and unread)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if name.startswith("template/") or not source.exists():
            continue
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (tmp_path / "template").mkdir(exist_ok=True)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_this_repository_passes(repo: Path):
    assert workflow_check.check(repo) == []


def test_a_workflow_naming_a_missing_file_fails(repo: Path):
    (repo / "deploy/tools/chart-check.sh").unlink()
    edit(repo / ".github/workflows/ci.yml", "run: make chart-check", "run: bash deploy/tools/chart-check.sh")
    findings = workflow_check.check(repo)
    assert any("deploy/tools/chart-check.sh, which does not exist" in f for f in findings), findings


def test_an_action_by_tag_fails(repo: Path):
    edit(repo / ".github/workflows/ci.yml", "actions/checkout@34e114876b0b11c390a56381ad16ebd13914f8d5", "actions/checkout@v4")
    findings = workflow_check.check(repo)
    assert any("uses actions/checkout@v4, not pinned by a commit SHA" in f for f in findings), findings


def test_the_script_exits_1_on_a_finding(repo: Path):
    edit(repo / ".github/workflows/ci.yml", "run: make chart-check", "run: make chart-lint")
    result = subprocess.run(
        ["python", str(ROOT / "deploy/tools/workflow-check.py"), "--root", str(repo)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "runs `make chart-lint`, which the Makefile does not have" in result.stdout


def test_a_release_building_another_dockerfile_fails(repo: Path):
    (repo / "deploy/Containerfile.other").write_text("FROM scratch\n")
    edit(repo / ".github/workflows/release.yml", "file: deploy/Dockerfile", "file: deploy/Containerfile.other")
    findings = workflow_check.check(repo)
    assert any("builds deploy/Containerfile.other, not IMAGE_FILE deploy/Dockerfile" in f for f in findings), findings


def test_an_image_built_by_hand_in_e2e_fails(repo: Path):
    edit(repo / ".github/workflows/e2e.yml", 'run: make image CONTAINER=docker IMAGE="$IMAGE"',
         'run: docker build -f deploy/Dockerfile -t "$IMAGE" .')
    findings = workflow_check.check(repo)
    assert any("builds an image by hand" in f for f in findings), findings
    assert any("e2e.yml builds no image from IMAGE_FILE" in f for f in findings), findings


def test_image_check_must_build_through_make_image(repo: Path):
    edit(repo / "Makefile", "image-check: image deps-up", "image-check: deps-up")
    findings = workflow_check.check(repo)
    assert "Makefile: image-check does not build through `make image`" in findings


def test_a_path_filter_matching_nothing_fails(repo: Path):
    edit(repo / ".github/workflows/e2e.yml", '"helm/**"', '"charts/**"')
    findings = workflow_check.check(repo)
    assert any("paths 'charts/**' matches no file" in f for f in findings), findings


def test_an_image_run_by_tag_fails(repo: Path):
    text = (repo / ".github/workflows/e2e.yml").read_text()
    pinned = next(w for w in text.split() if w.startswith("--image=postgres"))
    edit(repo / ".github/workflows/e2e.yml", pinned, "--image=postgres:16")
    findings = workflow_check.check(repo)
    assert any("runs image postgres:16 by a tag, not a digest" in f for f in findings), findings


@pytest.mark.parametrize("needed", ["Makefile", ".dockerignore", "Cargo.toml", ".github/workflows/e2e.yml"])
def test_an_image_workflow_whose_paths_miss_a_build_input_fails(repo: Path, needed: str):
    edit(repo / ".github/workflows/e2e.yml", f', "{needed}"', "")
    findings = workflow_check.check(repo)
    assert any(f"paths filter misses {needed}" in f for f in findings), findings


def test_a_release_that_publishes_without_the_tests_fails(repo: Path):
    release = repo / ".github/workflows/release.yml"
    text = release.read_text()
    assert "needs: [ci, e2e]" in text, "the release's image job needs ci and e2e"
    edit(release, "needs: [ci, e2e]", "needs: [ci]")
    findings = workflow_check.check(repo)
    assert any("publishes without passing e2e.yml" in f for f in findings), findings


def test_image_check_must_run_in_a_workflow(repo: Path):
    ci = repo / ".github/workflows/ci.yml"
    edit(ci, "make image-check", "make image")
    findings = workflow_check.check(repo)
    assert any("no workflow runs `make image-check`" in f for f in findings), findings


def test_a_release_for_one_architecture_fails(repo: Path):
    edit(repo / ".github/workflows/release.yml", "platform: linux/arm64", "platform: linux/amd64")
    findings = workflow_check.check(repo)
    assert any("release.yml builds no image for linux/arm64" in f for f in findings), findings


def test_a_release_binary_without_its_crate_list_fails(repo: Path):
    edit(repo / ".github/workflows/release.yml", "AUDITABLE: required", "AUDITABLE: optional")
    findings = workflow_check.check(repo)
    assert any("cargo auditable" in f for f in findings), findings
