# Shell helpers shared by nsd.sh, unbound.sh, postfix.sh and exim.sh: argument checks,
# template rendering, readiness polls and stopping a daemon by its recorded PID.
# Source this file; it defines functions only and starts nothing.

REALSERVERS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Seconds a daemon gets to answer after it was started, and to exit after SIGTERM.
: "${REALSERVERS_START_TIMEOUT:=20}"
: "${REALSERVERS_STOP_TIMEOUT:=10}"

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

require_command() {
    command -v "$1" >/dev/null 2>&1 ||
        die "$1 not found; install the Debian package $2 (apt-get install -y $2)"
}

# Accept only an IPv4 address in 127.0.0.0/8, because every server here must
# stay on loopback.
require_loopback_address() {
    [[ $1 =~ ^127\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] ||
        die "invalid address '$1': expected an IPv4 address in 127.0.0.0/8"
    local octet
    for octet in "${BASH_REMATCH[@]:1}"; do
        ((octet <= 255)) || die "invalid address '$1': octet $octet is over 255"
    done
}

require_port() {
    [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= 65535)) ||
        die "invalid port '$1': expected a number from 1 to 65535"
}

require_absolute_dir() {
    [[ $1 == /* ]] || die "invalid state directory '$1': expected an absolute path"
}

# Copy a template to a destination, replacing each @NAME@ with the value of the
# shell variable NAME. Values must not contain '|' or a newline.
render_template() {
    local template=$1 destination=$2
    shift 2
    local sed_script=() name value
    for name in "$@"; do
        value=${!name}
        [[ $value != *'|'* && $value != *$'\n'* ]] ||
            die "template value $name contains '|' or a newline: $value"
        sed_script+=(-e "s|@${name}@|${value}|g")
    done
    sed "${sed_script[@]}" "$REALSERVERS_DIR/$template" >"$destination"
    if grep -q '@[A-Z_]\+@' "$destination"; then
        die "template $template left placeholders unset in $destination: $(grep -o '@[A-Z_]\+@' "$destination" | sort -u | tr '\n' ' ')"
    fi
}

# Print the last lines of a log file to stderr, to explain a failed start.
print_log_tail() {
    local log_file=$1
    if [[ -s $log_file ]]; then
        echo "--- last lines of $log_file ---" >&2
        tail -n 40 "$log_file" >&2
        echo "--- end of $log_file ---" >&2
    else
        echo "(log file $log_file is missing or empty)" >&2
    fi
}

# Print the PID stored in a pid file if that process is still running and its
# executable is the expected one; print nothing otherwise. The executable check
# keeps a stale pid file from pointing a signal at an unrelated process.
running_pid() {
    local pid_file=$1 executable=$2 pid
    [[ -s $pid_file ]] || return 0
    read -r pid <"$pid_file" || true
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$executable" ]] || return 0
    echo "$pid"
}

# Succeed if a process runs and is not a zombie. A daemon that forked into
# the background is reaped by PID 1, which may take a second or more in a
# container, and kill -0 succeeds on a zombie until then.
pid_alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# Send SIGTERM to one recorded PID and wait for it to exit; use SIGKILL if it is
# still running after REALSERVERS_STOP_TIMEOUT seconds.
stop_pid() {
    local pid=$1 name=$2 waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while pid_alive "$pid"; do
        if ((waited >= REALSERVERS_STOP_TIMEOUT * 10)); then
            echo "$name (PID $pid) did not exit ${REALSERVERS_STOP_TIMEOUT}s after SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        ((waited += 1))
    done
}

# Send "<name> SOA" over TCP with RD clear and print the reply as hex bytes
# separated by spaces, without the two-byte length prefix. Print nothing if no
# reply arrives within 3 seconds.
dns_tcp_query_soa() {
    timeout 3 bash -c '
        address=$1 port=$2 name=$3
        query="\x4d\x58\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        IFS=. read -ra labels <<<"${name%.}"
        for label in "${labels[@]}"; do
            [[ -n $label ]] || continue
            query+=$(printf "\\\\x%02x" "${#label}")$label
        done
        query+="\x00\x00\x06\x00\x01"
        length=$(printf "%b" "$query" | wc -c)
        exec 3<>"/dev/tcp/$address/$port" || exit 1
        prefix=$(printf "\\\\x%02x\\\\x%02x" $((length / 256)) $((length % 256)))
        printf "%b" "$prefix$query" >&3
        length_bytes=($(head -c 2 <&3 | od -An -tx1 -v))
        ((${#length_bytes[@]} == 2)) || exit 1
        head -c $((16#${length_bytes[0]} * 256 + 16#${length_bytes[1]})) <&3 | od -An -tx1 -v | tr -s " \n" " "
    ' dns_tcp_query_soa "$@" 2>/dev/null || true
}

# Succeed if a DNS server answers a query over TCP, whatever the RCODE: this
# proves that it listens and answers.
dns_tcp_answers() {
    local reply
    read -ra reply <<<"$(dns_tcp_query_soa "$@")"
    [[ ${reply[0]:-} == 4d && ${reply[1]:-} == 58 ]]
}

# Print the SOA serial in a DNS server's answer for "<name> SOA", or nothing if
# the answer has no SOA record.
dns_tcp_soa_serial() {
    local reply
    read -ra reply <<<"$(dns_tcp_query_soa "$@")"
    ((${#reply[@]} > 12)) || return 0
    [[ ${reply[0]} == 4d && ${reply[1]} == 58 ]] || return 0

    local position=12 answer_count=$((16#${reply[6]}${reply[7]})) type
    skip_dns_name() {
        local length
        while ((position < ${#reply[@]})); do
            length=$((16#${reply[position]}))
            if ((length == 0)); then
                ((position += 1))
                return
            elif ((length >= 192)); then
                ((position += 2))
                return
            fi
            ((position += length + 1))
        done
    }

    skip_dns_name
    ((position += 4))
    while ((answer_count-- > 0 && position < ${#reply[@]})); do
        skip_dns_name
        type=${reply[position]}${reply[position + 1]}
        if [[ $type == 0006 ]]; then
            ((position += 10))
            skip_dns_name
            skip_dns_name
            echo $((16#${reply[position]}${reply[position + 1]}${reply[position + 2]}${reply[position + 3]}))
            return
        fi
        ((position += 8))
        ((position += 2 + 16#${reply[position]}${reply[position + 1]}))
    done
}

# Read an SMTP greeting and succeed if it is a 220 reply; then send QUIT.
smtp_greets() {
    local address=$1 port=$2
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        IFS= read -r -t 2 line <&3 || exit 1
        printf "QUIT\r\n" >&3
        [[ $line == 220* ]]
    ' smtp_greets "$address" "$port" 2>/dev/null
}

# Call a check function with its arguments until it succeeds, for at most
# REALSERVERS_START_TIMEOUT seconds. Fail early if the daemon PID has exited.
wait_until_ready() {
    local description=$1 pid=$2 log_file=$3
    shift 3
    local deadline=$((SECONDS + REALSERVERS_START_TIMEOUT))
    while ! "$@"; do
        if ! pid_alive "$pid"; then
            echo "$description (PID $pid) exited during startup" >&2
            print_log_tail "$log_file"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "$description (PID $pid) did not answer within ${REALSERVERS_START_TIMEOUT}s" >&2
            print_log_tail "$log_file"
            return 1
        fi
        sleep 0.1
    done
}

# Wait until a daemon in its own daemon mode has written its pid file, then
# print the PID.
wait_for_pid_file() {
    local pid_file=$1 executable=$2 log_file=$3 description=$4
    local deadline=$((SECONDS + REALSERVERS_START_TIMEOUT)) pid
    while :; do
        pid=$(running_pid "$pid_file" "$executable")
        [[ -n $pid ]] && break
        if ((SECONDS >= deadline)); then
            echo "$description wrote no pid file $pid_file within ${REALSERVERS_START_TIMEOUT}s" >&2
            print_log_tail "$log_file"
            return 1
        fi
        sleep 0.1
    done
    echo "$pid"
}
