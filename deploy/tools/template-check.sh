#!/usr/bin/env bash
# `make template-check`: generate a project from template/ the two ways users do, prove that no
# trace of the default name is left, build it, run its unit tests and lint its chart.
# Needs CARGO_GENERATE and HELM4. The generated project builds in the main target/ folder: its dependencies are already compiled there.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
name=acme-orders

generate() { # $1: output folder, rest: source arguments
  local into=$1; shift
  mkdir -p "$into"
  (cd "$into" && "$CARGO_GENERATE" generate "$@" --name "$name" --silent --vcs none \
     -d description="Takes orders for ACME." -d registry=registry.example.com/acme \
     -d repository_url=https://git.example.com/acme/acme-orders >/dev/null)
}

echo "== cargo generate --path"
generate "$work/by-path" --path "$root/template"
echo "== cargo generate --git"
generate "$work/by-git" --git "file://$root" template
diff -r -q "$work/by-path/$name" "$work/by-git/$name"
project=$work/by-path/$name

echo "== no occurrence of the default name"
if grep -rIil shipshape "$project"; then echo "the files above still say shipshape" >&2; exit 1; fi
if find "$project" -iname '*shipshape*' | grep .; then echo "paths above still say shipshape" >&2; exit 1; fi
grep -q 'name = "acme-orders"' "$project/crates/api/Cargo.toml"
grep -q 'AcmeOrdersCriticalCheckFailing' "$project/helm/acme-orders/files/alerts.yaml"
grep -q 'registry.example.com/acme/acme-orders' "$project/helm/acme-orders/values.yaml"
grep -q '{{- define "acme-orders.fullname" -}}' "$project/helm/acme-orders/templates/_helpers.tpl"
echo "ok"

echo "== build and unit tests of the generated project"
(cd "$project" && CARGO_TARGET_DIR="$root/target" cargo build --workspace --quiet \
   && CARGO_TARGET_DIR="$root/target" cargo test --workspace --lib --bins --quiet 2>&1 | grep -E '^test result' )

echo "== its chart"
values=$project/helm/$name/ci/inline-urls-values.yaml
"$HELM4" lint --strict "$project/helm/$name" -f "$values" | tail -n1
"$HELM4" template "$name" "$project/helm/$name" -f "$values" | grep -q "name: $name"
echo "template-check passed"
