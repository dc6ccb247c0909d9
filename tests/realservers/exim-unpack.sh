#!/usr/bin/env bash
# Unpack Exim into a private folder, without installing it: Debian's
# exim4-daemon-light conflicts with postfix (both provide mail-transport-agent),
# so exim.sh runs the binary from this folder beside the installed Postfix.
#
#   exim-unpack.sh EXIM_ROOT
#
# Downloads exim4-daemon-light and libidn12 (a library that exim4 links and a
# Debian 12 image may lack) with "apt-get download" and extracts them with
# "dpkg-deb -x" into EXIM_ROOT. Nothing is registered with dpkg. Run
# "apt-get update" first on a fresh machine. Does nothing if EXIM_ROOT already
# contains a working exim4.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(exim4-daemon-light libidn12)

(($# == 1)) || { echo "usage: exim-unpack.sh EXIM_ROOT" >&2; exit 2; }
EXIM_ROOT=$1
require_absolute_dir "$EXIM_ROOT"
EXIM=$EXIM_ROOT/usr/sbin/exim4
LIBRARY_PATH=$EXIM_ROOT/usr/lib/x86_64-linux-gnu

missing_libraries() {
    LD_LIBRARY_PATH=$LIBRARY_PATH ldd "$EXIM" | grep 'not found' || true
}

if [[ -x $EXIM && -z $(missing_libraries) ]]; then
    exit 0
fi

require_command apt-get apt
require_command dpkg-deb dpkg
download_dir=$EXIM_ROOT/debs
mkdir -p "$download_dir"
(cd "$download_dir" && apt-get download "${PACKAGES[@]}") >&2 ||
    die "apt-get download ${PACKAGES[*]} failed; run apt-get update and retry"
for deb in "$download_dir"/*.deb; do
    dpkg-deb -x "$deb" "$EXIM_ROOT"
done

[[ -x $EXIM ]] || die "$EXIM not found after unpacking ${PACKAGES[*]}"
missing=$(missing_libraries)
[[ -z $missing ]] || die "exim4 in $EXIM_ROOT lacks shared libraries: $missing"
