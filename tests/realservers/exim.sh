#!/usr/bin/env bash
# Run a private Exim, unpacked by exim-unpack.sh, as a second MTA beside the
# installed Postfix. Its configuration, spool and logs live under STATE_DIR.
# Needs root.
#
#   exim.sh start STATE_DIR EXIM_ROOT ADDRESS PORT HOSTNAME [CERT_FILE KEY_FILE]
#   exim.sh stop STATE_DIR
#
# start prints the daemon PID once Exim sends its 220 greeting. The relay
# domain is HOSTNAME without its first label (mx.exim.test gives exim.test);
# exim.conf.in lists the replies to RCPT and DATA. Without CERT_FILE and
# KEY_FILE, a self-signed certificate for HOSTNAME is made with openssl.
#
# Debian's exim4 looks up its compiled-in user Debian-exim before it reads any
# configuration. Unless that user exists, Exim runs in a private mount
# namespace where copies of /etc/passwd and /etc/group that add the user are
# bind-mounted over the originals; the files on disk are never changed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EXIM_USER=Debian-exim

usage() {
    sed -n '6,7s/^#   //p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# Print an ID from the system range that neither /etc/passwd nor /etc/group uses.
free_system_id() {
    local id
    for ((id = 999; id >= 100; id--)); do
        if ! cut -d: -f3 /etc/passwd /etc/group | grep -qx "$id"; then
            echo "$id"
            return
        fi
    done
    die "no free user ID from 100 to 999 for $EXIM_USER"
}

# Run exim4 with the rendered configuration, in a private mount namespace that
# shows BIND_ACCOUNTS' copies of /etc/passwd and /etc/group.
run_exim() {
    local exim=$1
    shift
    unshare --mount --propagation private sh -c "$BIND_ACCOUNTS && exec \"\$@\"" exim \
        env LD_LIBRARY_PATH="$EXIM_LIBRARY_PATH" "$exim" -C "$STATE_DIR/exim.conf" "$@"
}

cmd_start() {
    local exim_root=$1 address=$2 port=$3 hostname=${4,,} cert_file=${5:-} key_file=${6:-}
    require_absolute_dir "$exim_root"
    require_loopback_address "$address"
    require_port "$port"
    [[ $hostname =~ ^[a-z0-9-]+(\.[a-z0-9-]+)+$ ]] ||
        die "invalid hostname '$4': expected a name with at least two labels, such as mx.exim.test"
    local relay_domain=${hostname#*.}
    ((EUID == 0)) || die "Exim needs root here: it switches to the $EXIM_USER user"
    local exim=$exim_root/usr/sbin/exim4
    [[ -x $exim ]] || die "$exim not found; run exim-unpack.sh $exim_root first"
    require_command unshare util-linux

    local pid
    pid=$(running_pid "$STATE_DIR/exim.pid" "$exim")
    [[ -z $pid ]] || die "Exim already runs from $STATE_DIR with PID $pid"

    local uid gid private_accounts=no
    if getent passwd "$EXIM_USER" >/dev/null; then
        uid=$(id -u "$EXIM_USER")
        gid=$(id -g "$EXIM_USER")
    else
        uid=$(free_system_id)
        gid=$uid
        private_accounts=yes
    fi

    # Exim runs as EXIM_USER after it starts, so that user owns the spool, the
    # logs and the TLS files, and must be able to reach STATE_DIR.
    mkdir -p "$STATE_DIR/spool" "$STATE_DIR/log" "$STATE_DIR/tls"
    rm -f "$STATE_DIR/exim.pid"
    if [[ -z $cert_file ]]; then
        require_command openssl openssl
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -days 30 -subj "/CN=$hostname" -addext "subjectAltName=DNS:$hostname" \
            -keyout "$STATE_DIR/tls/key.pem" -out "$STATE_DIR/tls/cert.pem" 2>/dev/null ||
            die "openssl failed to make a certificate for $hostname"
    else
        [[ -r $cert_file ]] || die "certificate file $cert_file not found or not readable"
        [[ -r $key_file ]] || die "key file $key_file not found or not readable"
        cp "$cert_file" "$STATE_DIR/tls/cert.pem"
        cp "$key_file" "$STATE_DIR/tls/key.pem"
    fi
    chmod 600 "$STATE_DIR/tls/key.pem"
    chown -R "$uid:$gid" "$STATE_DIR/spool" "$STATE_DIR/log" "$STATE_DIR/tls"
    setpriv --reuid="$uid" --regid="$gid" --clear-groups test -w "$STATE_DIR/spool" ||
        die "user ID $uid cannot write to $STATE_DIR/spool: every parent directory needs search permission for others (chmod o+x), so use a state directory such as one made by mktemp -d under /tmp with chmod 711"

    ADDRESS=$address PORT=$port HOSTNAME=$hostname RELAY_DOMAIN=$relay_domain \
        STATE_DIR=$STATE_DIR EXIM_USER=$EXIM_USER \
        CERT_FILE=$STATE_DIR/tls/cert.pem KEY_FILE=$STATE_DIR/tls/key.pem \
        render_template exim.conf.in "$STATE_DIR/exim.conf" \
        ADDRESS PORT HOSTNAME RELAY_DOMAIN STATE_DIR EXIM_USER CERT_FILE KEY_FILE

    BIND_ACCOUNTS=:
    if [[ $private_accounts == yes ]]; then
        cp /etc/passwd "$STATE_DIR/passwd"
        cp /etc/group "$STATE_DIR/group"
        echo "$EXIM_USER:x:$uid:$gid:Exim for the interop tests:/nonexistent:/usr/sbin/nologin" >>"$STATE_DIR/passwd"
        echo "$EXIM_USER:x:$gid:" >>"$STATE_DIR/group"
        BIND_ACCOUNTS="mount --bind $STATE_DIR/passwd /etc/passwd && mount --bind $STATE_DIR/group /etc/group"
    fi
    EXIM_LIBRARY_PATH=$exim_root/usr/lib/x86_64-linux-gnu

    local log_file=$STATE_DIR/log/mainlog
    run_exim "$exim" -bV >"$STATE_DIR/exim-version.txt" 2>&1 ||
        { cat "$STATE_DIR/exim-version.txt" >&2; die "exim4 -bV rejected $STATE_DIR/exim.conf"; }

    # -bd makes the daemon fork into the background and write exim.pid. The
    # mount namespace lives on with the daemon and ends when it exits.
    run_exim "$exim" -bd ||
        { print_log_tail "$STATE_DIR/log/paniclog"; die "exim4 failed to start"; }
    pid=$(wait_for_pid_file "$STATE_DIR/exim.pid" "$exim" "$log_file" Exim) || exit 1
    echo "$exim" >"$STATE_DIR/executable"
    wait_until_ready "Exim on $address:$port" "$pid" "$log_file" \
        smtp_greets "$address" "$port" || { stop_pid "$pid" Exim; exit 1; }
    echo "$pid"
}

# NOTE: on SIGTERM the daemon re-executes its compiled-in path /usr/sbin/exim4
# to remove exim.pid, fails because that path is absent, and logs this to
# paniclog. It exits all the same, and running_pid ignores the stale pid file.
cmd_stop() {
    [[ -s $STATE_DIR/executable ]] || return 0
    local exim pid
    read -r exim <"$STATE_DIR/executable"
    pid=$(running_pid "$STATE_DIR/exim.pid" "$exim")
    [[ -z $pid ]] || stop_pid "$pid" Exim
}

(($# >= 2)) || usage
command=$1
STATE_DIR=$2
shift 2
require_absolute_dir "$STATE_DIR"

case $command in
start) (($# == 4 || $# == 6)) || usage; cmd_start "$@" ;;
stop) (($# == 0)) || usage; cmd_stop ;;
*) usage ;;
esac
