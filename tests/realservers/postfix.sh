#!/usr/bin/env bash
# Run a private Postfix for the interop tests, with its config_directory and
# queue_directory under STATE_DIR; /etc/postfix is never written (Postfix reads
# only its package metadata there, such as dynamicmaps.cf). Needs root.
#
#   postfix.sh start STATE_DIR ADDRESS PORT HOSTNAME [CERT_FILE KEY_FILE]
#   postfix.sh stop STATE_DIR
#
# start prints the master PID once smtpd sends its 220 greeting. The relay
# domain is HOSTNAME without its first label (mx.interop.test gives
# interop.test); postfix-main.cf.in lists the replies to RCPT and DATA.
# Without CERT_FILE and KEY_FILE, a self-signed certificate for HOSTNAME is
# made with openssl in STATE_DIR/tls.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MASTER=/usr/lib/postfix/sbin/master

usage() {
    sed -n '6,7s/^#   //p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

make_self_signed_certificate() {
    local hostname=$1 cert_file=$2 key_file=$3
    require_command openssl openssl
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -days 30 -subj "/CN=$hostname" -addext "subjectAltName=DNS:$hostname" \
        -keyout "$key_file" -out "$cert_file" 2>/dev/null ||
        die "openssl failed to make a certificate for $hostname"
}

cmd_start() {
    local address=$1 port=$2 hostname=${3,,} cert_file=${4:-} key_file=${5:-}
    require_loopback_address "$address"
    require_port "$port"
    [[ $hostname =~ ^[a-z0-9-]+(\.[a-z0-9-]+)+$ ]] ||
        die "invalid hostname '$3': expected a name with at least two labels, such as mx.interop.test"
    local relay_domain=${hostname#*.}
    ((EUID == 0)) || die "Postfix needs root: its daemons switch to the postfix user"
    require_command postfix postfix
    getent passwd postfix >/dev/null || die "user postfix not found; install the Debian package postfix"

    local pid
    pid=$(running_pid "$STATE_DIR/spool/pid/master.pid" "$MASTER")
    [[ -z $pid ]] || die "Postfix already runs from $STATE_DIR with PID $pid"

    # The master opens data/master.lock as the postfix user, so that user must
    # be able to reach STATE_DIR. "postfix check" creates the queue directories.
    mkdir -p "$STATE_DIR/etc" "$STATE_DIR/spool" "$STATE_DIR/data" "$STATE_DIR/tls"
    chown postfix "$STATE_DIR/data"
    runuser -u postfix -- test -w "$STATE_DIR/data" ||
        die "the postfix user cannot write to $STATE_DIR/data: every parent directory needs search permission for others (chmod o+x), so use a state directory such as one made by mktemp -d under /tmp with chmod 711"

    if [[ -z $cert_file ]]; then
        cert_file=$STATE_DIR/tls/cert.pem
        key_file=$STATE_DIR/tls/key.pem
        make_self_signed_certificate "$hostname" "$cert_file" "$key_file"
    fi
    [[ -r $cert_file ]] || die "certificate file $cert_file not found or not readable"
    [[ -r $key_file ]] || die "key file $key_file not found or not readable"

    ADDRESS=$address PORT=$port HOSTNAME=$hostname RELAY_DOMAIN=$relay_domain \
        STATE_DIR=$STATE_DIR CERT_FILE=$cert_file KEY_FILE=$key_file \
        render_template postfix-main.cf.in "$STATE_DIR/etc/main.cf" \
        ADDRESS HOSTNAME RELAY_DOMAIN STATE_DIR CERT_FILE KEY_FILE
    ADDRESS=$address PORT=$port \
        render_template postfix-master.cf.in "$STATE_DIR/etc/master.cf" ADDRESS PORT
    printf 'postmaster@%s OK\n' "$relay_domain" >"$STATE_DIR/etc/relay_recipients"

    local log_file=$STATE_DIR/postfix.log
    postfix -c "$STATE_DIR/etc" check ||
        { print_log_tail "$log_file"; die "postfix check rejected $STATE_DIR/etc"; }
    postfix -c "$STATE_DIR/etc" start ||
        { print_log_tail "$log_file"; die "postfix failed to start"; }
    pid=$(wait_for_pid_file "$STATE_DIR/spool/pid/master.pid" "$MASTER" "$log_file" "Postfix master") || exit 1
    wait_until_ready "Postfix on $address:$port" "$pid" "$log_file" \
        smtp_greets "$address" "$port" || { stop_master "$pid"; exit 1; }
    echo "$pid"
}

# Stop the master, then wait for the daemons it had started, which exit once
# the master is gone.
stop_master() {
    local pid=$1 children child
    children=$(ps -o pid= --ppid "$pid" || true)
    stop_pid "$pid" "Postfix master"
    for child in $children; do
        stop_pid "$child" "Postfix daemon"
    done
}

cmd_stop() {
    local pid
    pid=$(running_pid "$STATE_DIR/spool/pid/master.pid" "$MASTER")
    [[ -z $pid ]] || stop_master "$pid"
}

(($# >= 2)) || usage
command=$1
STATE_DIR=$2
shift 2
require_absolute_dir "$STATE_DIR"

case $command in
start) (($# == 3 || $# == 5)) || usage; cmd_start "$@" ;;
stop) (($# == 0)) || usage; cmd_stop ;;
*) usage ;;
esac
