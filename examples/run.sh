#!/usr/bin/env bash
# Run an example in a fresh git repository: validate, plan, apply and wait for the runs,
# then show that a second plan has nothing left to do.
# Usage: bash examples/run.sh EXAMPLE [WORKDIR]     (EXAMPLE: quickstart, slurm; WORKDIR: a new temporary directory)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="${1:?usage: bash examples/run.sh EXAMPLE [WORKDIR]}"
[ -d "$here/$name" ] || { echo "no example '$name' in $here" >&2; exit 1; }
work="${2:-$(mktemp -d)}/$name"
mkdir -p "$work"
cp -rL "$here/$name/." "$work/"  # -L: an example may share a file with another by a link
# keep the editor's schema hint working from the copy
sed -i 's#\$schema=../../schemas/#$schema='"$here"'/../schemas/#' "$work/mantik.yaml"
cd "$work"
git init -q
if [ -f dvc.paths ]; then  # the example's data goes under DVC, as a user would put it there
  dvc init -q
  xargs dvc add -q < dvc.paths
  rm dvc.paths
fi
git add -A
git -c user.name=example -c user.email=example@localhost commit -qm "$name example"
echo "== example $name in $work"
set -x
mantik validate
mantik plan
mantik apply --auto-approve --wait
mantik status
mantik plan --detailed-exitcode
