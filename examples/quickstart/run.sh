#!/usr/bin/env bash
# Run the quickstart in a fresh git repository: validate, plan, apply and wait,
# then show that a second plan has nothing left to do.
# Usage: bash examples/quickstart/run.sh [WORKDIR]   (default: a new temporary directory)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${1:-$(mktemp -d)}/quickstart"
mkdir -p "$work"
cp "$here/train.py" "$here/mantik.yaml" "$work/"
sed -i 's#\$schema=../../schemas/#$schema='"$here"'/../../schemas/#' "$work/mantik.yaml"
cd "$work"
git init -q
git add train.py mantik.yaml
git -c user.name=quickstart -c user.email=quickstart@localhost commit -qm "quickstart"
echo "== quickstart in $work"
set -x
mantik validate
mantik plan
mantik apply --auto-approve --wait
mantik status
mantik plan --detailed-exitcode
