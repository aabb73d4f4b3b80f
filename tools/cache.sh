# Sourced by the build scripts (tools/controlplane, tools/helm, bench/peer): one cache root
# outside the checkout, and each build's directory keyed by the inputs that pin it.
#   RUNBOOK_OPERATOR_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/runbook-operator)
cache=${RUNBOOK_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/runbook-operator}

# cache_bin NAME FILE...: the bin directory of NAME built from exactly these files' contents
cache_bin() {
    local name=$1
    shift
    echo "$cache/$name/$(cat "$@" | sha256sum | cut -c1-12)/bin"
}
