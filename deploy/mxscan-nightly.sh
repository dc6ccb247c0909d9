#!/usr/bin/env bash
# Nightly mxscan sweep: sweep, compare with the previous night, write metrics and a report.
#
# Run by deploy/mxscan-sweep.service (systemd) or deploy/mxscan.cron. Settings come from
# the environment, which both read from /etc/default/mxscan (see deploy/mxscan.default):
#
#   MXSCAN_CONFIG        sweep configuration (required), e.g. /etc/mxscan/sweep.yaml
#   MXSCAN_DATA_DIR      sweeps, changes and reports go here (default /var/lib/mxscan)
#   MXSCAN_METRICS_FILE  Prometheus textfile (default: none, no metrics written)
#   MXSCAN_METRIC_LABELS space-separated NAME=VALUE labels for every sample (default none)
#   MXSCAN_FAIL_ON       change types that count as an alert (default: all types)
#   MXSCAN_EXPIRY_DAYS   certificate expiry window in days (default 14)
#   MXSCAN_KEEP_DAYS     days of sweeps, changes and reports kept (default 30)
#   MXSCAN_ALERT_COMMAND run with the changes file as its argument when alert changes exist
#   MXSCAN_BIN           the mxscan command (default: mxscan on PATH)
#
# Layout under MXSCAN_DATA_DIR, one file per run named by its UTC start time (RUN is
# like 2026-01-31T023000Z, so a second run on the same night keeps the first one's files):
#   sweeps/RUN.jsonl(.gz)  changes/RUN.jsonl  reports/RUN.html  latest.jsonl -> the last sweep
#
# Exit status follows mxscan diff: 0 no alert changes, 1 alert changes (their lines are
# printed on standard output, which cron mails), 2 trouble (a failed sweep, an unreadable
# file, another run still going).
set -euo pipefail

config=${MXSCAN_CONFIG:-}
data_dir=${MXSCAN_DATA_DIR:-/var/lib/mxscan}
metrics_file=${MXSCAN_METRICS_FILE:-}
metric_labels=${MXSCAN_METRIC_LABELS:-}
fail_on=${MXSCAN_FAIL_ON:-all}
expiry_days=${MXSCAN_EXPIRY_DAYS:-14}
keep_days=${MXSCAN_KEEP_DAYS:-30}
alert_command=${MXSCAN_ALERT_COMMAND:-}
mxscan=${MXSCAN_BIN:-mxscan}

trouble() {
    echo "mxscan-nightly: $*" >&2
    exit 2
}

[ -n "$config" ] || trouble "set MXSCAN_CONFIG to the sweep configuration file (see /etc/default/mxscan)"

mkdir -p "$data_dir/sweeps" "$data_dir/changes" "$data_dir/reports"

# One run at a time: a sweep that overruns into the next night must not race it.
exec 9>"$data_dir/.lock"
flock --nonblock 9 || trouble "another run holds $data_dir/.lock; not starting"

run=$(date -u +%Y-%m-%dT%H%M%SZ)
sweep="$data_dir/sweeps/$run.jsonl"
changes="$data_dir/changes/$run.jsonl"
report="$data_dir/reports/$run.html"

# The previous sweep, before this run moves the link.
previous=""
if [ -e "$data_dir/latest.jsonl" ]; then
    previous=$(readlink -f "$data_dir/latest.jsonl")
fi

# Sweep into a temporary name, so that a failed or killed sweep never becomes "latest".
if ! "$mxscan" --quiet scan "$config" -o "$sweep.partial"; then
    rm -f "$sweep.partial"
    trouble "sweep of $config failed; see the messages above"
fi
mv "$sweep.partial" "$sweep"

labels=()
for label in $metric_labels; do
    labels+=(--metric-label "$label")
done
if [ -n "$metrics_file" ]; then
    "$mxscan" --quiet summary "$sweep" --format prometheus --expiry-days "$expiry_days" "${labels[@]}" -o "$metrics_file" \
        || trouble "writing metrics to $metrics_file failed"
fi

status=0
if [ -n "$previous" ]; then
    "$mxscan" --quiet diff "$previous" "$sweep" --expiry-days "$expiry_days" --fail-on "$fail_on" -o "$changes" || status=$?
    [ "$status" -le 1 ] || trouble "comparing $previous with $sweep failed"
    "$mxscan" --quiet report "$sweep" --previous "$previous" --expiry-days "$expiry_days" -o "$report" || trouble "writing $report failed"
else
    "$mxscan" --quiet report "$sweep" --expiry-days "$expiry_days" -o "$report" || trouble "writing $report failed"
fi

ln -sfn "sweeps/$run.jsonl" "$data_dir/latest.jsonl.new"
mv -T "$data_dir/latest.jsonl.new" "$data_dir/latest.jsonl"

# Compress older sweeps (mxscan reads .gz directly) and remove what is past keeping.
find "$data_dir/sweeps" -name '*.jsonl' ! -name "$run.jsonl" -exec gzip -f {} +
find "$data_dir/sweeps" "$data_dir/changes" "$data_dir/reports" -type f -mtime +"$keep_days" -delete

if [ "$status" -eq 1 ]; then
    if [ "$fail_on" = all ]; then
        cat "$changes"
    else
        grep -E "\"change\":\"(${fail_on//,/|})\"" "$changes" || true
    fi
    if [ -n "$alert_command" ]; then
        $alert_command "$changes" || echo "mxscan-nightly: alert command failed: $alert_command" >&2
    fi
fi
exit "$status"
