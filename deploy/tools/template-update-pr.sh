#!/usr/bin/env bash
# The template-update workflow's job (.github/workflows/template-update.yml): `make
# template-update` (TO from the environment; empty: the newest release), then, when anything
# changed, a commit on the branch template-update/<version> pushed to origin and a pull request
# opened with `gh`, a draft when conflicts are left (committed with their markers). A branch
# already on origin belongs to the team (a conflict may be resolved there): it is left alone.
# Exit status: 0 when up to date or a pull request is open, the update's status on an error.
set -euo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT

status=0
make --no-print-directory template-update | tee "$log" || status=$?
conflicts=$(git diff --name-only --diff-filter=U)
if [[ $status != 0 && -z $conflicts ]]; then exit "$status"; fi
git add -A
if git diff --cached --quiet; then echo "up to date"; exit 0; fi

version=$(sed -n 's/^tag = "\(.*\)"$/\1/p' .template.toml)
branch="template-update/${version:-head}"
title="Template update to ${version:-the template branch head}"
if [[ -n $conflicts ]]; then title="$title (conflicts to resolve)"; fi
if git ls-remote --exit-code --heads origin "$branch" >/dev/null; then
  echo "$branch is on origin already: its pull request is open or was dealt with"
  git reset -q --hard HEAD
  exit 0
fi
git switch -q -c "$branch"
git commit -q -m "$title" -m "$(cat "$log")"
git push -q origin "$branch"
body=$(printf 'Merged by `make template-update` (docs/template-updates.md):\n\n```\n%s\n```\n' "$(cat "$log")")
draft=()
if [[ -n $conflicts ]]; then draft=(--draft); fi
gh pr create --head "$branch" --title "$title" --body "$body" "${draft[@]}"
