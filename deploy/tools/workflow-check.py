"""Holds the GitHub workflows to this repository, so that a broken reference fails `make lint`
here instead of a job on GitHub after the push.

Checks, for every file in .github/workflows:
- every repository path a step names (in `run:` scripts, `with:` inputs, `hashFiles(...)`,
  `on.*.paths` filters) exists;
- every `make TARGET` a step runs is a target of the Makefile;
- every image a workflow builds is built from the Makefile's IMAGE_FILE, whether through
  `make image` or a docker/build-push-action step; release.yml and e2e.yml each build one, and
  a build-push step is preceded by `make image-context` (the Dockerfile's inputs);
- `make image-check` builds through `make image`, so the image checked here is the one shipped;
- a workflow that builds an image on path-filtered events runs when the image's inputs outside
  crates/ and deploy/ (Makefile, .dockerignore, Cargo.toml, Cargo.lock) or the workflow change;
- every container image a job or a step runs is pinned by digest, every action by a commit SHA;
- release.yml publishes only what passed ci.yml and e2e.yml (called as reusable workflows, some
  workflow running `make image-check`), for linux/amd64 and linux/arm64, from a binary built with
  cargo auditable.

Usage: workflow-check.py [--root DIR]; exit 1 with one line per finding.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import re
import shlex
import sys
from pathlib import Path

import yaml

# Top-level folders whose paths a workflow may name; a path under one of them must exist.
TRACKED_ROOTS = ("deploy", "helm", "crates", "config", "docs", ".github", ".ci")
PATH_RE = re.compile(r"(?<![\w./${}-])((?:%s)/[\w./*@+-]*[\w*])" % "|".join(re.escape(r) for r in TRACKED_ROOTS))
HASHFILES_RE = re.compile(r"hashFiles\(([^)]*)\)")
MAKE_RE = re.compile(r"(?:^|[;&|(]\s*|\bsudo\s+(?:-\S+\s+)*|\benv\s+(?:\S+=\S*\s+)*)make\s+([^;&|#\n]*)", re.M)
IMAGE_BUILD_RE = re.compile(r"\b(?:docker|podman)\s+(?:buildx\s+)?build\b|\bbuildah\s+(?:bud|build)\b")
BUILD_PUSH_ACTION = "docker/build-push-action"
# An action by a full commit SHA: a moved tag cannot change what a workflow runs.
PINNED_RE = re.compile(r"@[0-9a-f]{40}$")
# A container image a step runs (`kubectl run|create ... --image=...`): pinned by digest, or a
# re-pushed tag changes what CI tests.
RUN_IMAGE_RE = re.compile(r"--image[= ]([^\s'\"]+)")
# What an image build reads besides crates/ and deploy/: a workflow building one on pull requests
# filtered by path must run when these (or the workflow itself) change.
IMAGE_INPUTS = ("Makefile", ".dockerignore", "Cargo.toml", "Cargo.lock")


class Makefile:
    def __init__(self, path: Path):
        text = path.read_text()
        self.targets: set[str] = set()
        self.patterns: list[re.Pattern[str]] = []
        self.prerequisites: dict[str, list[str]] = {}
        for line in text.splitlines():
            rule = re.match(r"^([A-Za-z0-9_.%$()/-][^:=\s]*(?:\s+[^:=\s]+)*)\s*:(?!=)\s*(.*)$", line)
            if not rule or line.startswith("\t"):
                continue
            prereqs = rule.group(2).split("##")[0].split("|")[0].split()
            for name in rule.group(1).split():
                if name == ".PHONY":
                    continue
                if "%" in name:
                    self.patterns.append(re.compile("^" + re.escape(name).replace("%", ".+") + "$"))
                else:
                    self.targets.add(name)
                    self.prerequisites[name] = prereqs
        variable = re.search(r"^IMAGE_FILE\s*:?=\s*(\S+)\s*$", text, re.M)
        self.image_file = variable.group(1) if variable else None

    def has(self, target: str) -> bool:
        return target in self.targets or any(p.match(target) for p in self.patterns)


def steps(workflow: dict):
    for job_name, job in (workflow.get("jobs") or {}).items():
        for index, step in enumerate(job.get("steps") or []):
            yield job_name, index, step


def make_targets(script: str) -> list[str]:
    targets = []
    for match in MAKE_RE.finditer(script):
        for word in shlex.split(match.group(1), comments=True):
            if word.startswith("-") or "=" in word:
                continue
            targets.append(word)
    return targets


def named_paths(text: str) -> list[str]:
    return [p.rstrip(".") for p in PATH_RE.findall(text)]


def matches(root: Path, pattern: str) -> bool:
    # glob("missing/**") yields "missing/" itself: keep only what is really there.
    return any(Path(p).exists() for p in glob.glob(str(root / pattern), recursive=True))


def exists(root: Path, path: str) -> bool:
    if any(ch in path for ch in "*?["):
        return matches(root, path)
    return (root / path).exists()


def check(root: Path) -> list[str]:
    findings: list[str] = []
    makefile = Makefile(root / "Makefile")
    if not makefile.image_file:
        findings.append("Makefile: no IMAGE_FILE := ... (the one image definition)")
    elif not (root / makefile.image_file).is_file():
        findings.append(f"Makefile: IMAGE_FILE {makefile.image_file} does not exist")
    if "image" not in makefile.prerequisites.get("image-check", []):
        findings.append("Makefile: image-check does not build through `make image`")

    workflow_files = sorted((root / ".github" / "workflows").glob("*.y*ml"))
    if not workflow_files:
        findings.append(".github/workflows: no workflow files")
    image_builds: dict[str, int] = {}
    image_check_runs = 0
    for file in workflow_files:
        where = file.relative_to(root)
        workflow = yaml.safe_load(file.read_text()) or {}
        image_builds[file.name] = 0
        # `on:` parses as True in YAML 1.1.
        triggers = workflow.get("on", workflow.get(True)) or {}
        if isinstance(triggers, dict):
            for event, spec in triggers.items():
                for pattern in (spec or {}).get("paths", []) if isinstance(spec, dict) else []:
                    if not pattern.startswith("!") and not matches(root, pattern):
                        findings.append(f"{where}: on.{event}.paths '{pattern}' matches no file")
        filters = [spec.get("paths") for spec in triggers.values() if isinstance(spec, dict) and spec.get("paths")] if isinstance(triggers, dict) else []
        for job_name, job in (workflow.get("jobs") or {}).items():
            containers = [job.get("container")] + list((job.get("services") or {}).values())
            for container in containers:
                image = container.get("image") if isinstance(container, dict) else container
                if image and "@sha256:" not in str(image):
                    findings.append(f"{where}: jobs.{job_name} runs image {image} by a tag, not a digest")
        context_ready = False
        for job, index, step in steps(workflow):
            label = f"{where}: jobs.{job}.steps[{index}]"
            script = step.get("run", "") or ""
            inputs = step.get("with") or {}
            texts = [script] + [str(v) for v in inputs.values()]
            for text in texts:
                for path in named_paths(text):
                    if not exists(root, path):
                        findings.append(f"{label} names {path}, which does not exist")
                for args in HASHFILES_RE.findall(text):
                    for pattern in re.findall(r"'([^']+)'", args):
                        if not matches(root, pattern):
                            findings.append(f"{label}: hashFiles('{pattern}') matches no file")
            for target in make_targets(script):
                if target == "image-check":
                    image_check_runs += 1
                if not makefile.has(target):
                    findings.append(f"{label} runs `make {target}`, which the Makefile does not have")
                if target == "image-context":
                    context_ready = True
                if target in ("image", "image-check"):
                    image_builds[file.name] += 1
            for image in RUN_IMAGE_RE.findall(script):
                if "@sha256:" not in image:
                    findings.append(f"{label} runs image {image} by a tag, not a digest")
            for line in script.splitlines():
                if IMAGE_BUILD_RE.search(line):
                    findings.append(f"{label} builds an image by hand ({line.strip()[:60]}); use `make image`")
            action = str(step.get("uses", ""))
            if action and not action.startswith(("./", "docker://")) and not PINNED_RE.search(action):
                findings.append(f"{label} uses {action}, not pinned by a commit SHA")
            if action.startswith(BUILD_PUSH_ACTION + "@"):
                image_builds[file.name] += 1
                used = inputs.get("file")
                if used != makefile.image_file:
                    findings.append(f"{label} builds {used or 'the default Dockerfile'}, not IMAGE_FILE {makefile.image_file}")
                if not context_ready:
                    findings.append(f"{label} builds before `make image-context` prepared the image inputs")
        if image_builds[file.name]:
            for paths in filters:
                for needed in (*IMAGE_INPUTS, str(where)):
                    if not any(fnmatch.fnmatch(needed, p) for p in paths if not p.startswith("!")):
                        findings.append(f"{where}: builds an image but its paths filter misses {needed}")
    findings += release_gates(root, image_check_runs)
    for required in ("release.yml", "e2e.yml"):
        if required in image_builds and image_builds[required] == 0:
            findings.append(f".github/workflows/{required} builds no image from IMAGE_FILE")
        if required not in image_builds:
            findings.append(f".github/workflows/{required} is missing")
    return findings


PUBLISHES_RE = re.compile(r"imagetools\s+create|helm\s+push|cosign\s+sign")


def release_gates(root: Path, image_check_runs: int) -> list[str]:
    """What a release may publish: only what the tests passed (ci.yml and e2e.yml called as
    reusable workflows, `make image-check` in some workflow), for linux/amd64 and linux/arm64,
    with the binary's crate list embedded (cargo auditable) for the SBOM."""
    findings = []
    if not image_check_runs:
        findings.append(".github/workflows: no workflow runs `make image-check`")
    path = root / ".github/workflows/release.yml"
    if not path.exists():
        return findings
    jobs = (yaml.safe_load(path.read_text()) or {}).get("jobs") or {}

    def needs(name: str, seen: set[str]) -> set[str]:
        direct = jobs.get(name, {}).get("needs") or []
        for parent in [direct] if isinstance(direct, str) else direct:
            if parent not in seen:
                seen.add(parent)
                needs(parent, seen)
        return seen

    def called(workflow: str) -> set[str]:
        return {n for n, j in jobs.items() if str(j.get("uses", "")) == f"./.github/workflows/{workflow}"}

    platforms: set[str] = set()
    for name, job in jobs.items():
        matrix = ((job.get("strategy") or {}).get("matrix") or {}).get("include") or []
        publishes = False
        for step in job.get("steps") or []:
            inputs = step.get("with") or {}
            if str(step.get("uses", "")).startswith(BUILD_PUSH_ACTION + "@"):
                publishes = True
                value = str(inputs.get("platforms", ""))
                if "matrix.platform" in value:
                    platforms |= {str(m.get("platform")) for m in matrix}
                else:
                    platforms |= {p.strip() for p in value.split(",") if p.strip()}
            if PUBLISHES_RE.search(step.get("run", "") or ""):
                publishes = True
            if "image-context" in make_targets(step.get("run", "") or ""):
                if (step.get("env") or {}).get("AUDITABLE") != "required":
                    findings.append(f"release.yml: jobs.{name} builds the binary without AUDITABLE: required (cargo auditable: the SBOM lists its crates)")
        if publishes:
            ancestors = needs(name, set())
            for workflow in ("ci.yml", "e2e.yml"):
                if not called(workflow) & ancestors:
                    findings.append(f"release.yml: jobs.{name} publishes without passing {workflow}")
    for platform in ("linux/amd64", "linux/arm64"):
        if platform not in platforms:
            findings.append(f"release.yml builds no image for {platform}")
    return findings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    root = parser.parse_args().root
    findings = check(root)
    for finding in findings:
        print(finding)
    count = len(sorted((root / ".github" / "workflows").glob("*.y*ml")))
    print(f"workflow-check: {count} workflow(s), {len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
