#!/usr/bin/env bash
# Captures haproxy's own master CLI as byte-exact transcripts (tests/transcripts/<version>/).
#   tests/transcripts/capture.sh /usr/sbin/haproxy [OUT_DIR]
# A new haproxy version is one run away: run it with that binary (e.g. haproxy 3.0 in the trixie
# container of the systemd tier) and commit the new <version>/ directory. Needs python3 only.
# Loopback and a temporary directory only; bounded (300 s outer limit); stops what it started.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 HAPROXY_BINARY [OUT_DIR]" >&2
    exit 2
fi
exec timeout --kill-after=10 300 python3 "$here/capture.py" "$@"
