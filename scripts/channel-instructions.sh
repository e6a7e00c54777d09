#!/usr/bin/env bash
# Instructions per data packet of the channel benchmark (issue 2's load-independent
# cross-check): runs one 16 MiB AES-256-GCM transfer of `benches/channel.rs` (protocol mode,
# 1,452-byte packets) under callgrind, collecting only inside the transfers, and splits the
# instructions into the AEAD (ring's functions, whatever ring inlines into ours, and libc's
# memset, which only ring calls in the transfer), the
# content copy (libc's memcpy) and the rest (channel, endpoint, the test layer's framing,
# the bench's loop). valgrind runs ring's AES-NI path, not the VAES one the CPU uses natively.
# Usage: bash scripts/channel-instructions.sh   (installs valgrind if missing; ~1 min)
# CG_OUT=FILE keeps the callgrind profile (for callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null 2>&1; then
  echo "installing valgrind"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
bench=$(cargo bench --bench channel --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*channel-[^"]*"' | tail -n1 | sed 's/"executable":"\(.*\)"/\1/')
[ -x "$bench" ] || { echo "channel bench not built" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# SSS_PAIRS=1: the two warm-up transfers and one measured transfer, 11,799 data packets each.
SSS_BENCH_BLOCKS=0 SSS_PAIRS=1 SSS_PAIRED_ONLY=aes-256-gcm/protocol valgrind --tool=callgrind \
  --toggle-collect='channel::next_transfer*' --callgrind-out-file="$out/cg" "$bench" --paired \
  >"$out/log" 2>&1
[ -n "${CG_OUT:-}" ] && cp "$out/cg" "$CG_OUT"
packets=$(( 3 * $(sed -n 's/.* \([0-9]*\) data packets per transfer.*/\1/p' "$out/log" | head -n1) ))
callgrind_annotate --auto=no --inclusive=no --threshold=100 "$out/cg" 2>/dev/null \
  | grep -E '^ *[0-9,]+ \(' | grep -v PROGRAM \
  | awk -v pk="$packets" '
      { x = $1; gsub(",", "", x); line = $0; sub(/^ *[0-9,]+ \([ 0-9.]+%\) +/, "", line)
        if (line ~ /ring-0\.17|ring::|ring_core|memset/) aead += x
        else if (line ~ /memmove|memcpy/) copy += x
        else proto += x }
      END { printf "per data packet (%d packets): AEAD %.0f, content copy %.0f, protocol %.0f\n", pk, aead/pk, copy/pk, proto/pk
            printf "instruction ratio bare/channel: %.3f\n", aead/(aead + copy + proto) }'
