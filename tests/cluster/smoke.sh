#!/usr/bin/env bash
# Smoke check of the binaries that `cargo xtask cluster-build` builds: etcd and
# kube-apiserver on 127.0.0.1 only (high ports), then kubectl asks the apiserver /readyz
# as an admin (static token, group system:masters). Everything it starts is killed and its
# scratch directory removed on exit, also on failure.
#
#   tests/cluster/smoke.sh [BIN_DIR]     # default: target/cluster/bin under the workspace
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "${1:-$here/../../target/cluster/bin}" && pwd)
etcd_port=${ETCD_PORT:-42379}
etcd_peer_port=${ETCD_PEER_PORT:-42380}
apiserver_port=${APISERVER_PORT:-46443}

tmp=$(mktemp -d /tmp/stagewall-cluster-smoke.XXXXXX)
pids=()
cleanup() {
    status=$?
    set +x
    # Last started first (the apiserver before its etcd); each gets 20 s to stop on
    # SIGTERM, then SIGKILL.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 ]]; then
        for log in "$tmp"/*.log; do
            [[ -f $log ]] || continue
            echo "--- last lines of $(basename "$log")" >&2
            tail -n 20 "$log" >&2
        done
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT

# Waits up to $1 seconds for the command in the remaining arguments to succeed.
wait_for() {
    { local -; set +x; } 2>/dev/null
    local seconds=$1
    shift
    for _ in $(seq "$((seconds * 2))"); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        for pid in "${pids[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                echo "a server exited while waiting for: $*" >&2
                return 1
            fi
        done
        sleep 0.5
    done
    echo "timed out after ${seconds}s waiting for: $*" >&2
    return 1
}

set -x
"$bin/etcd" \
    --name smoke \
    --data-dir "$tmp/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "smoke=http://127.0.0.1:$etcd_peer_port" \
    >"$tmp/etcd.log" 2>&1 &
pids+=($!)
wait_for 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

# The service account token signer; the serving certificate is self-signed by the
# apiserver itself into --cert-dir. The endpoint reconciler (the default service's
# endpoints) refuses a loopback advertise address: none here, with no pods to reach it.
openssl genrsa -out "$tmp/sa.key" 2048 2>/dev/null
token=$(openssl rand -hex 16)
echo "$token,admin,admin,system:masters" >"$tmp/tokens.csv"

"$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 \
    --endpoint-reconciler-type none \
    --secure-port "$apiserver_port" \
    --cert-dir "$tmp/certs" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$tmp/sa.key" \
    --service-account-signing-key-file "$tmp/sa.key" \
    --authorization-mode RBAC \
    --token-auth-file "$tmp/tokens.csv" \
    >"$tmp/kube-apiserver.log" 2>&1 &
pids+=($!)

kubeconfig=$tmp/kubeconfig
kubectl=("$bin/kubectl" --kubeconfig "$kubeconfig")
# The serving certificate is signed by a CA the apiserver made up in --cert-dir; its
# chain lies there once it is serving, so the kubeconfig skips verification instead
# (loopback only).
"${kubectl[@]}" config set-cluster smoke --server "https://127.0.0.1:$apiserver_port" \
    --insecure-skip-tls-verify=true
set +x
"${kubectl[@]}" config set-credentials admin --token "$token"
set -x
"${kubectl[@]}" config set-context smoke --cluster smoke --user admin
"${kubectl[@]}" config use-context smoke

wait_for 90 "${kubectl[@]}" get --raw /readyz
"${kubectl[@]}" get --raw '/readyz?verbose'
"${kubectl[@]}" version
"${kubectl[@]}" auth whoami
"${kubectl[@]}" get namespaces
