#!/usr/bin/env bash
# `make chart-check`: lint, render, schema-validate, policy-scan and rule-check the chart.
# Needs HELM4, HELM3 (binaries) and VENV (with kubernetes-validate and checkov); promtool if present.
set -euo pipefail
cd "$(dirname "$0")/../.."
chart=helm/{{project-name}}
all_on=$chart/ci/all-on-values.yaml
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
step() { printf '\n== %s\n' "$*"; }
must_fail() {
  local what=$1; shift
  if "$@" >"$out/neg.log" 2>&1; then echo "FAIL: $what was accepted" >&2; exit 1; fi
  echo "ok: $what refused: $(grep -m1 -iE 'error|fail|want' "$out/neg.log" | cut -c1-160)"
}

for helm in "$HELM4" "$HELM3"; do
  step "lint --strict with $("$helm" version --short)"
  "$helm" lint --strict "$chart" | tail -n1
  "$helm" lint --strict "$chart" -f "$all_on" | tail -n1
done

step "render"
"$HELM4" template {{project-name}} "$chart" > "$out/default.yaml"
"$HELM4" template {{project-name}} "$chart" -f "$all_on" > "$out/all-on.yaml"
"$HELM3" template {{project-name}} "$chart" -f "$all_on" > "$out/all-on-helm3.yaml"
diff -q <(grep -v 'helm.sh/chart' "$out/all-on.yaml") <(grep -v 'helm.sh/chart' "$out/all-on-helm3.yaml") >/dev/null \
  || { echo "Helm 3 and Helm 4 render differently" >&2; diff "$out/all-on.yaml" "$out/all-on-helm3.yaml" | head -20; exit 1; }
echo "ok: $(grep -c '^kind:' "$out/all-on.yaml") manifests, identical with Helm 3 and Helm 4"

step "validate against Kubernetes schemas (strict)"
for version in 1.30 1.33 1.35; do
  "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "$version" "$out/default.yaml" "$out/all-on.yaml"
  echo "ok: Kubernetes $version"
done

step "negative controls: what must be refused is refused"
must_fail "replicaCount=abc" "$HELM4" template {{project-name}} "$chart" --set replicaCount=abc
must_fail "a grace period below the shutdown budget" "$HELM4" template {{project-name}} "$chart" --set terminationGracePeriodSeconds=10
must_fail "a startup budget below the startup deadline" "$HELM4" template {{project-name}} "$chart" --set probes.startup.failureThreshold=5
sed 's/^  replicas: 3$/  replicas: three/' "$out/default.yaml" > "$out/broken.yaml"
must_fail "a manifest with replicas: three" "$VENV/bin/kubernetes-validate" --strict --quiet -k 1.33 "$out/broken.yaml"

step "policy scan (checkov)"
PATH="$(dirname "$HELM4"):$PATH" "$VENV/bin/checkov" -d "$chart" --config-file "$chart/ci/checkov.yaml" --quiet > "$out/checkov.log" 2>&1 || true
grep -E 'Passed checks' "$out/checkov.log"
grep -q 'Failed checks: 0,' "$out/checkov.log" || { cat "$out/checkov.log" >&2; exit 1; }

step "docs/probes.md in step with values.yaml"
"$VENV/bin/python" deploy/tools/probe-timeline.py --check

step "alert rules"
if command -v promtool >/dev/null; then
  promtool check rules "$chart/files/alerts.yaml"
else
  echo "promtool not installed (Debian package prometheus): skipped"
fi
