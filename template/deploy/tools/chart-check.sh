#!/usr/bin/env bash
# `make chart-check`: lint, render, schema-validate, test, policy-scan and rule-test the chart.
# Needs HELM4, HELM3 (binaries) and VENV (kubernetes-validate, checkov, pytest); promtool.
set -euo pipefail
cd "$(dirname "$0")/../.."
chart=helm/{{project-name}}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
step() { printf '\n== %s\n' "$*"; }
# The chart renders nothing without connection URLs: these are its two ways to get them.
cases=(inline-urls all-on)

for helm in "$HELM4" "$HELM3"; do
  step "lint --strict with $("$helm" version --short)"
  for case in "${cases[@]}"; do
    # Not inside `echo $(...)`: a failing lint must fail this script.
    "$helm" lint --strict "$chart" -f "$chart/ci/$case-values.yaml" > "$out/lint.log" 2>&1 \
      || { cat "$out/lint.log" >&2; exit 1; }
    echo "$case: $(tail -n1 "$out/lint.log")"
  done
done

step "render (Helm 3 and Helm 4 must agree)"
for case in "${cases[@]}"; do
  "$HELM4" template {{project-name}} "$chart" -n prod -f "$chart/ci/$case-values.yaml" > "$out/$case.yaml"
  "$HELM3" template {{project-name}} "$chart" -n prod -f "$chart/ci/$case-values.yaml" > "$out/$case-helm3.yaml"
  diff -q <(grep -v 'helm.sh/chart' "$out/$case.yaml") <(grep -v 'helm.sh/chart' "$out/$case-helm3.yaml") >/dev/null \
    || { echo "Helm 3 and Helm 4 render $case differently" >&2; diff "$out/$case.yaml" "$out/$case-helm3.yaml" | head -20; exit 1; }
  echo "ok: $case, $(grep -c '^kind:' "$out/$case.yaml") manifests, identical with Helm 3 and Helm 4"
done

step "validate against Kubernetes schemas (strict)"
for version in 1.30 1.33 1.35; do
  "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "$version" "$out/inline-urls.yaml" "$out/all-on.yaml"
  echo "ok: Kubernetes $version"
done
sed 's/^  replicas: 3$/  replicas: three/' "$out/inline-urls.yaml" > "$out/broken.yaml"
if "$VENV/bin/kubernetes-validate" --strict --quiet -k 1.33 "$out/broken.yaml" >/dev/null 2>&1; then
  echo "FAIL: the validator accepted replicas: three" >&2; exit 1
fi
echo "ok: negative control (replicas: three) refused"

step "render cases and refusals (pytest, Helm 4 and Helm 3)"
HELM4="$HELM4" HELM3="$HELM3" "$VENV/bin/python" -m pytest --quiet --no-header -p no:cacheprovider deploy/tools/tests/test_chart.py

step "policy scan (checkov) of both renders"
"$VENV/bin/checkov" -f "$out/inline-urls.yaml" -f "$out/all-on.yaml" --framework kubernetes \
  --config-file "$chart/ci/checkov.yaml" --quiet > "$out/checkov.log" 2>&1 || true
grep -E 'Passed checks' "$out/checkov.log"
grep -q 'Failed checks: 0,' "$out/checkov.log" || { cat "$out/checkov.log" >&2; exit 1; }

step "docs in step with values.yaml"
"$VENV/bin/python" deploy/tools/probe-timeline.py --check
"$VENV/bin/python" deploy/tools/chart-readme.py --check

step "alert rules: promtool check and unit tests on the rendered PrometheusRule"
"$VENV/bin/python" - "$out/all-on.yaml" "$out/alerts.rendered.yaml" <<'PY'
import sys, yaml
rule = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "PrometheusRule")
yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)
PY
cp "$chart/ci/alerts-test.yaml" "$out/"
promtool check rules "$out/alerts.rendered.yaml"
promtool test rules "$out/alerts-test.yaml"
