#!/usr/bin/env bash
# Run a private NSD authority for the interop tests, configured and kept under
# STATE_DIR, never under /etc/nsd.
#
#   nsd.sh start STATE_DIR ADDRESS PORT        print the daemon PID when it answers
#   nsd.sh load-zone STATE_DIR ORIGIN ZONE_FILE add the zone or reload it
#   nsd.sh stop STATE_DIR                      stop the PID recorded at start
#
# NSD serves the parent zones test. and example. from the start, so unknown
# names below them get NXDOMAIN. Control goes through a unix socket in STATE_DIR.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NSD=/usr/sbin/nsd

usage() {
    sed -n '4,6s/^#   //p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

nsd_control() {
    nsd-control -c "$STATE_DIR/nsd.conf" "$@"
}

# Lowercase a zone name and strip its trailing dot, the form used in file names.
normalize_origin() {
    local origin=${1,,}
    origin=${origin%.}
    [[ -n $origin ]] || die "invalid zone origin '$1': the root zone is not served here"
    [[ $origin =~ ^[a-z0-9_-]+(\.[a-z0-9_-]+)*$ ]] ||
        die "invalid zone origin '$1': expected letters, digits, '-' and '_' in dot-separated labels"
    echo "$origin"
}

# Print the SOA serial of a zone file, as parsed by nsd-checkzone.
file_serial() {
    nsd-checkzone -p "$1" "$2" | tr -s ' \t\n' ' ' |
        grep -oE ' SOA [^ ]+ [^ ]+ \(? ?[0-9]+' | grep -oE '[0-9]+$' | head -n 1
}

# Count the log lines in which NSD reports that it read a zone file.
count_zone_loads() {
    local origin=$1 log_file=$2
    grep -cF "info: zone $origin read with success" "$log_file" || true
}

cmd_start() {
    local address=$1 port=$2
    require_loopback_address "$address"
    require_port "$port"
    require_command nsd nsd
    require_command nsd-control nsd

    local pid
    pid=$(running_pid "$STATE_DIR/nsd.pid" "$NSD")
    [[ -z $pid ]] || die "NSD already runs from $STATE_DIR with PID $pid"

    mkdir -p "$STATE_DIR/zones" "$STATE_DIR/xfr"
    rm -f "$STATE_DIR/nsd.pid" "$STATE_DIR/nsd.ctl"
    ADDRESS=$address PORT=$port STATE_DIR=$STATE_DIR \
        render_template nsd.conf.in "$STATE_DIR/nsd.conf" ADDRESS PORT STATE_DIR
    local origin
    for origin in test example; do
        ORIGIN=$origin. ADDRESS=$address \
            render_template parent.zone.in "$STATE_DIR/zones/$origin.zone" ORIGIN ADDRESS
    done
    echo "$address $port" >"$STATE_DIR/endpoint"
    nsd-checkconf "$STATE_DIR/nsd.conf" || die "nsd-checkconf rejected $STATE_DIR/nsd.conf"

    # NSD forks into the background itself and writes nsd.pid.
    "$NSD" -c "$STATE_DIR/nsd.conf" ||
        { print_log_tail "$STATE_DIR/nsd.log"; die "nsd failed to start"; }
    pid=$(wait_for_pid_file "$STATE_DIR/nsd.pid" "$NSD" "$STATE_DIR/nsd.log" NSD) || exit 1
    wait_until_ready "NSD on $address:$port" "$pid" "$STATE_DIR/nsd.log" \
        dns_tcp_answers "$address" "$port" test. || { stop_pid "$pid" NSD; exit 1; }
    echo "$pid"
}

cmd_load_zone() {
    local origin zone_file=$2
    origin=$(normalize_origin "$1")
    [[ -r $zone_file ]] || die "zone file $zone_file not found or not readable"
    [[ -n $(running_pid "$STATE_DIR/nsd.pid" "$NSD") ]] || die "NSD does not run from $STATE_DIR; run '$0 start' first"

    local address port
    read -r address port <"$STATE_DIR/endpoint"

    nsd-checkzone "$origin." "$zone_file" >/dev/null || die "nsd-checkzone rejected $zone_file for zone $origin."
    local expected_serial
    expected_serial=$(file_serial "$origin." "$zone_file")

    # Replace the file in one rename, so NSD never reads half of it.
    local target=$STATE_DIR/zones/$origin.zone
    cp "$zone_file" "$target.new"
    mv -f "$target.new" "$target"

    # NSD reads the zone in the background and logs one line when it is done.
    # Count those lines first, so an earlier load of the same zone is not taken
    # for this one.
    local log_file=$STATE_DIR/nsd.log loads_before
    loads_before=$(count_zone_loads "$origin" "$log_file")

    if nsd_control zonestatus "$origin" >/dev/null 2>&1; then
        nsd_control reload "$origin" >/dev/null || die "nsd-control reload $origin failed"
    else
        nsd_control addzone "$origin" zonefile >/dev/null || die "nsd-control addzone $origin failed"
    fi

    local deadline=$((SECONDS + REALSERVERS_START_TIMEOUT))
    until (($(count_zone_loads "$origin" "$log_file") > loads_before)) &&
        [[ $(dns_tcp_soa_serial "$address" "$port" "$origin.") == "$expected_serial" ]]; do
        if ((SECONDS >= deadline)); then
            nsd_control zonestatus "$origin" >&2 || true
            print_log_tail "$log_file"
            die "NSD did not load serial $expected_serial of zone $origin. within ${REALSERVERS_START_TIMEOUT}s"
        fi
        sleep 0.1
    done
}

cmd_stop() {
    local pid
    pid=$(running_pid "$STATE_DIR/nsd.pid" "$NSD")
    [[ -z $pid ]] || stop_pid "$pid" NSD
}

(($# >= 2)) || usage
command=$1
STATE_DIR=$2
shift 2
require_absolute_dir "$STATE_DIR"

case $command in
start) (($# == 2)) || usage; cmd_start "$@" ;;
load-zone) (($# == 2)) || usage; cmd_load_zone "$@" ;;
stop) (($# == 0)) || usage; cmd_stop ;;
*) usage ;;
esac
