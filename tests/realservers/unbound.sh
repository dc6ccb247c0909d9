#!/usr/bin/env bash
# Run a private Unbound resolver for the interop tests, configured and kept
# under STATE_DIR, never under /etc/unbound.
#
#   unbound.sh start STATE_DIR ADDRESS PORT AUTHORITY_ADDRESS AUTHORITY_PORT
#   unbound.sh flush STATE_DIR      drop every cached answer and server state
#   unbound.sh stop STATE_DIR       stop the PID recorded at start
#
# start prints the daemon PID once the resolver answers. The resolver sends
# queries for test. and example. to the authority and to no other server, and
# answers REFUSED for every other name (see unbound.conf.in).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

UNBOUND=/usr/sbin/unbound

usage() {
    sed -n '5,7s/^#   //p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

unbound_control() {
    unbound-control -c "$STATE_DIR/unbound.conf" "$@"
}

cmd_start() {
    local address=$1 port=$2 authority_address=$3 authority_port=$4
    require_loopback_address "$address"
    require_port "$port"
    require_loopback_address "$authority_address"
    require_port "$authority_port"
    require_command unbound unbound
    require_command unbound-control unbound

    local pid
    pid=$(running_pid "$STATE_DIR/unbound.pid" "$UNBOUND")
    [[ -z $pid ]] || die "Unbound already runs from $STATE_DIR with PID $pid"

    mkdir -p "$STATE_DIR"
    rm -f "$STATE_DIR/unbound.pid" "$STATE_DIR/unbound.ctl"
    ADDRESS=$address PORT=$port STATE_DIR=$STATE_DIR \
        AUTHORITY_ADDRESS=$authority_address AUTHORITY_PORT=$authority_port \
        render_template unbound.conf.in "$STATE_DIR/unbound.conf" \
        ADDRESS PORT STATE_DIR AUTHORITY_ADDRESS AUTHORITY_PORT
    unbound-checkconf "$STATE_DIR/unbound.conf" >/dev/null ||
        die "unbound-checkconf rejected $STATE_DIR/unbound.conf"

    # Unbound forks into the background itself and writes unbound.pid.
    "$UNBOUND" -c "$STATE_DIR/unbound.conf" ||
        { print_log_tail "$STATE_DIR/unbound.log"; die "unbound failed to start"; }
    pid=$(wait_for_pid_file "$STATE_DIR/unbound.pid" "$UNBOUND" "$STATE_DIR/unbound.log" Unbound) || exit 1
    wait_until_ready "Unbound on $address:$port" "$pid" "$STATE_DIR/unbound.log" \
        dns_tcp_answers "$address" "$port" test. || { stop_pid "$pid" Unbound; exit 1; }
    echo "$pid"
}

# Remove every cached record, every negative answer and the per-server state
# (round-trip times and lameness), so the next query goes to the authority.
cmd_flush() {
    [[ -n $(running_pid "$STATE_DIR/unbound.pid" "$UNBOUND") ]] ||
        die "Unbound does not run from $STATE_DIR; run '$0 start' first"
    unbound_control flush_zone . >/dev/null || die "unbound-control flush_zone failed"
    unbound_control flush_infra all >/dev/null || die "unbound-control flush_infra failed"
    unbound_control flush_requestlist >/dev/null || die "unbound-control flush_requestlist failed"
}

cmd_stop() {
    local pid
    pid=$(running_pid "$STATE_DIR/unbound.pid" "$UNBOUND")
    [[ -z $pid ]] || stop_pid "$pid" Unbound
}

(($# >= 2)) || usage
command=$1
STATE_DIR=$2
shift 2
require_absolute_dir "$STATE_DIR"

case $command in
start) (($# == 4)) || usage; cmd_start "$@" ;;
flush) (($# == 0)) || usage; cmd_flush ;;
stop) (($# == 0)) || usage; cmd_stop ;;
*) usage ;;
esac
