#!/usr/bin/env bash
# The commit-msg hook (.pre-commit-config.yaml): a subject of at most 72 characters, then a blank
# line and a body that says why. Comment lines (#) are git's and do not count.
set -euo pipefail
mapfile -t lines < <(grep -v '^#' "$1")
subject=${lines[0]:-}
if [[ -z $subject ]]; then echo "commit message: no subject" >&2; exit 1; fi
if (( ${#subject} > 72 )); then
    echo "commit message: the subject has ${#subject} characters, at most 72: $subject" >&2; exit 1
fi
if [[ -n ${lines[1]:-} ]]; then echo "commit message: a blank line goes between the subject and the body" >&2; exit 1; fi
body=$(printf '%s\n' "${lines[@]:2}" | tr -d '[:space:]')
if [[ -z $body ]]; then echo "commit message: no body: say why, under the subject" >&2; exit 1; fi
