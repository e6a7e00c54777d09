#!/usr/bin/env bash
# Real-NAT lab: NAT hole punching through the regserver on real Linux NAT.
#
# For each scenario it builds network namespaces joined by veth pairs:
#
#   site A: ha (10.1.0.2) -- ra [NAT, WAN 198.51.100.2] --+
#                                                        inet (router) -- srv (203.0.113.2, regserver)
#   site B: hb (10.2.0.2) -- rb [NAT, WAN 192.0.2.2]    --+
#
# Each site router does nftables masquerade: "cone" is Linux's default (the source port is kept,
# so the mapping is endpoint-independent, and only replies matching a conntrack entry come in:
# port-restricted filtering); "sym" is `masquerade random` (a new random port for every
# destination: symmetric NAT). Routers drop unsolicited packets arriving on their WAN side in the
# input hook, as home routers do (otherwise conntrack would confirm an entry for them and remap
# the ports of later punches). Then `punch_check` (regserver/examples) runs on both hosts: both
# register, the host at site B looks up A's EID with NOTIFY, A gets the PunchRequest, both probe
# each other's public mapping, and each side reports whether a direct UDP round trip worked.
#
# Expected and asserted: a direct path for cone/cone; none for sym/sym and cone/sym (punching
# cannot work there), after checking that both hosts registered and got each other's
# endpoints. A control run without NOTIFY shows that the routers really filter. Then sss-host's
# own dial by EID (`Host::connect_eid`, through sss-host/examples/dial_eid.rs) connects and
# echoes a stream through the regserver binary: across two cone NATs directly (asserted: not
# relayed, and the regserver relayed nothing), once as it comes and once with the listener's
# router dropping the first initiation (the dialer must send it again when the listener's
# PUNCH arrives); and across sym/sym and cone/sym through the regserver's relay
# (spec/routing.md §6; asserted: the dialer reports the channel relayed and the regserver's
# stop log counts relayed packets; the relayed dials echo 300 kB each way, under the
# regserver's default per-slot budget). Teardown always runs.
#
# Usage: sudo bash scripts/nat-lab.sh        (about 25 s after the build; needs root)
# SSS_NAT_LAB=skip skips it (for machines without root; CI runs it); SSS_NAT_LAB_KEEP=1 keeps the
# logs of every host and of the regserver.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SSS_NAT_LAB:-}" = skip ]; then
  echo "nat-lab: SKIPPED (SSS_NAT_LAB=skip)"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "nat-lab: error: needs root (it creates network namespaces and nftables rules)." >&2
  echo "nat-lab: run it as root, or set SSS_NAT_LAB=skip to skip it." >&2
  exit 1
fi
if ! command -v nft >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  echo "nat-lab: installing nftables and iproute2"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq nftables iproute2 >/dev/null
fi

echo "nat-lab: building regserver, punch_check and sss-host's dial_eid"
artifacts=$(cargo build -q -p regserver --bin regserver --example punch_check \
  --message-format=json-render-diagnostics)
artifacts+=$'\n'$(cargo build -q -p sss-host --example dial_eid --message-format=json-render-diagnostics)
exe() { # the executable of the artifact named $1
  printf '%s\n' "$artifacts" | grep "\"name\":\"$1\"" \
    | grep -o '"executable":"[^"]*"' | head -n1 | sed 's/"executable":"\(.*\)"/\1/'
}
REGSERVER=$(exe regserver)
PUNCH=$(exe punch_check)
DIAL=$(exe dial_eid)
[ -x "$REGSERVER" ] && [ -x "$PUNCH" ] && [ -x "$DIAL" ] \
  || { echo "nat-lab: error: built binaries not found" >&2; exit 1; }

p="sl$$"                     # namespace prefix, unique per run
work=$(mktemp -d /tmp/nat-lab.XXXXXX)
pids=()

# Background programs are started with `ip netns exec` directly (it execs them: $! is their
# pid). Teardown stops those, then anything else still running in our namespaces (a namespace
# with a process in it outlives `ip netns del`), then deletes the namespaces.
teardown() {
  local ns pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  for ns in inet srv ra rb ha hb; do
    for pid in $(ip netns pids "$p-$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$p-$ns" 2>/dev/null || true
  done
}
if [ -n "${SSS_NAT_LAB_KEEP:-}" ]; then
  trap 'teardown; echo "nat-lab: logs kept in $work"' EXIT
else
  trap 'teardown; rm -rf "$work"' EXIT
fi
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$p-$ns" "$@"; }

# veth NS1 IF1 NS2 IF2: a veth pair between two namespaces.
veth() { ip -n "$p-$1" link add "$2" type veth peer name "$4" netns "$p-$3"; }

# router NS KIND: nftables masquerade (cone or sym) and a firewall that drops unsolicited WAN input.
router_rules() {
  local random=""
  [ "$2" = sym ] && random="random"
  in_ns "$1" nft -f - <<EOF
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade $random
  }
}
table inet filter {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname "lo" accept
    iifname "lan" accept
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" accept
    iifname "wan" ct state established,related accept
  }
}
EOF
}

build() { # build KIND_A KIND_B
  for ns in inet srv ra rb ha hb; do
    ip netns add "$p-$ns"
    ip -n "$p-$ns" link set lo up
  done
  veth inet i-srv srv eth0
  veth inet i-ra ra wan
  veth inet i-rb rb wan
  veth ra lan ha eth0
  veth rb lan hb eth0
  # The internet: three routed links.
  ip -n "$p-inet" addr add 203.0.113.1/24 dev i-srv
  ip -n "$p-inet" addr add 198.51.100.1/24 dev i-ra
  ip -n "$p-inet" addr add 192.0.2.1/24 dev i-rb
  ip -n "$p-srv" addr add 203.0.113.2/24 dev eth0
  ip -n "$p-ra" addr add 198.51.100.2/24 dev wan
  ip -n "$p-rb" addr add 192.0.2.2/24 dev wan
  ip -n "$p-ra" addr add 10.1.0.1/24 dev lan
  ip -n "$p-rb" addr add 10.2.0.1/24 dev lan
  ip -n "$p-ha" addr add 10.1.0.2/24 dev eth0
  ip -n "$p-hb" addr add 10.2.0.2/24 dev eth0
  for pair in inet:i-srv inet:i-ra inet:i-rb srv:eth0 ra:wan ra:lan rb:wan rb:lan ha:eth0 hb:eth0; do
    ip -n "$p-${pair%%:*}" link set "${pair#*:}" up
  done
  ip -n "$p-srv" route add default via 203.0.113.1
  ip -n "$p-ra" route add default via 198.51.100.1
  ip -n "$p-rb" route add default via 192.0.2.1
  ip -n "$p-ha" route add default via 10.1.0.1
  ip -n "$p-hb" route add default via 10.2.0.1
  for ns in inet ra rb; do in_ns "$ns" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'; done
  router_rules ra "$1"
  router_rules rb "$2"
}

# Keys are made once: the EIDs stay the same across scenarios.
"$PUNCH" keygen --key "$work/srv.key" >/dev/null
# dial_eid derives every key from a seed byte (32 bytes of it) and the regserver's from 3: the
# same key in a key file, for the regserver binary.
(umask 077; printf 'sss-ed25519-secret-v1 %s\n' \
  "$(printf '\x03%.0s' $(seq 32) | base32 -w0 | tr 'A-Z' 'a-z' | tr -d '=')" >"$work/seed3.key")
EID_A=$("$PUNCH" keygen --key "$work/a.key")
EID_B=$("$PUNCH" keygen --key "$work/b.key")

failures=0
summary=()

# scenario NAME KIND_A KIND_B EXPECT(direct|none|control)
# control: A only listens and B looks it up without NOTIFY, so A never sends toward B: B's
# probes must die at A's NAT (this shows the routers filter, so that a direct path elsewhere is
# the punching's doing).
scenario() {
  local name=$1 expect=$4 log="$work/$1"
  mkdir -p "$log"
  build "$2" "$3"
  local srv_eid=""
  start_regserver "$log" "$work/srv.key"
  if [ -z "$srv_eid" ]; then
    echo "nat-lab: $name: regserver did not start:"; cat "$log/srv.err"
    failures=$((failures + 1)); summary+=("$name: LAB FAILURE (regserver)"); teardown; return
  fi
  local common=(--server 203.0.113.2:9669 --server-eid "$srv_eid" --punch-secs 3)
  local role_a=(--role target --wait-secs 10) role_b=(--role caller --wait-secs 10)
  if [ "$expect" = control ]; then
    role_a=(--role listener --wait-secs 5)
    role_b=(--role caller --wait-secs 10 --no-notify)
  fi
  ip netns exec "$p-ha" "$PUNCH" run "${common[@]}" --key "$work/a.key" --peer "$EID_B" "${role_a[@]}" \
    >"$log/a.out" 2>"$log/a.err" &
  local pid_a=$!
  pids+=("$pid_a")
  local rc_a=0 rc_b=0
  in_ns hb "$PUNCH" run "${common[@]}" --key "$work/b.key" --peer "$EID_A" "${role_b[@]}" \
    >"$log/b.out" 2>"$log/b.err" || rc_b=$?
  wait "$pid_a" || rc_a=$?

  # Both must have registered through their NAT (observed = the router's WAN address) and got
  # the other's endpoints, whatever the punch did.
  local ok=1
  grep -q '^registered observed=198\.51\.100\.2:' "$log/a.out" || ok=0
  grep -q '^registered observed=192\.0\.2\.2:' "$log/b.out" || ok=0
  [ "$expect" = control ] || grep -q '^peer endpoints=.*(punch request)' "$log/a.out" || ok=0
  grep -q '^peer endpoints=.*(lookup)' "$log/b.out" || ok=0
  local verdict
  if [ "$ok" = 0 ] || [ "$rc_a" = 1 ] || [ "$rc_b" = 1 ]; then
    verdict="LAB FAILURE: registration or signalling did not work (exit A=$rc_a B=$rc_b)"
    failures=$((failures + 1))
  elif [ "$expect" = direct ] && [ "$rc_a" = 0 ] && [ "$rc_b" = 0 ]; then
    verdict="direct path works on both sides (expected)"
  elif [ "$expect" = none ] && [ "$rc_a" = 3 ] && [ "$rc_b" = 3 ]; then
    verdict="no direct path (expected: the relay carries this case, see host-dial-$name)"
  elif [ "$expect" = control ] && [ "$rc_a" = 3 ] && [ "$rc_b" = 3 ]; then
    verdict="without NOTIFY the caller's probes die at the target's NAT (expected)"
  else
    verdict="UNEXPECTED: expected $expect, got exit A=$rc_a B=$rc_b (0 direct, 3 none)"
    failures=$((failures + 1))
  fi
  echo "nat-lab: $name (A $2, B $3): $verdict"
  summary+=("$name: $verdict")
  if [[ "$verdict" == LAB* || "$verdict" == UNEXPECTED* ]]; then
    for f in srv.err a.out a.err b.out b.err; do echo "--- $name/$f"; cat "$log/$f"; done
  fi
  teardown
}

# start_regserver LOGDIR KEYFILE: the regserver binary in srv; sets srv_eid from its banner
# (empty on failure) and srv_pid.
start_regserver() {
  ip netns exec "$p-srv" "$REGSERVER" --bind 0.0.0.0:9669 --key "$2" >"$1/srv.out" 2>"$1/srv.err" &
  srv_pid=$!
  pids+=("$srv_pid")
  local banner="" i
  for i in $(seq 100); do
    banner=$(head -n1 "$1/srv.out" 2>/dev/null || true)
    [ -n "$banner" ] && break
    sleep 0.05
  done
  srv_eid=$(printf '%s' "$banner" | sed -n 's/^regserver eid=\([a-z2-7]*\) addr=.*/\1/p')
}

# host_dial NAME KIND_A KIND_B EXPECT(direct|relayed) [early-initiation]: sss-host's dial by
# EID (Host::connect_eid: lookup with NOTIFY, PUNCH probes, handshake, the relay fallback after
# 2 s without an answer, an echoed stream) from the host at site B to the one at site A, through
# the regserver binary. The regserver is stopped after the dial so that its stop log gives its
# relay counters.
# With `early-initiation`, the listener's router drops the first large datagram from the WAN,
# as a NAT drops an initiation that arrives before its host's PUNCH opened it: the dialer must
# then send it again as soon as the listener's PUNCH reaches it (`Channel::retry_handshake_now`,
# seen in its debug log), not at the handshake's timed retry a second later.
host_dial() {
  local name=$1 expect=$4 variant=${5:-} log="$work/$1"
  mkdir -p "$log"
  build "$2" "$3"
  if [ "$variant" = early-initiation ]; then
    in_ns ra nft -f - <<EOF
table ip lab {
  chain pre {
    type filter hook prerouting priority raw; policy accept;
    iifname "wan" udp length > 1000 quota until 1300 bytes counter drop
  }
}
EOF
  fi
  local srv_eid="" srv_pid=""
  start_regserver "$log" "$work/seed3.key"
  local verdict
  if [ -z "$srv_eid" ]; then
    verdict="LAB FAILURE (regserver)"
  else
    ip netns exec "$p-ha" "$DIAL" listen --regserver 203.0.113.2:9669 --seed 1 >"$log/a.out" 2>"$log/a.err" &
    pids+=($!)
    # The dialer looks the listener up: wait until the listener is registered (it prints
    # `observed=`), or a lookup sent first finds no record and the dial fails at once.
    local waited=0
    while ! grep -q ' observed=' "$log/a.out" 2>/dev/null && [ "$waited" -lt 100 ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    # Through the relay, a larger echo too: 300 kB each way, under the regserver's default
    # per-slot budget (1 MB/s after a 250 kB burst), so the budget and the channel's
    # congestion control meet.
    local bytes=()
    [ "$expect" = relayed ] && bytes=(--bytes 300000)
    local rc=0
    in_ns hb env RUST_LOG=sss_host=debug timeout 40 "$DIAL" dial --regserver 203.0.113.2:9669 \
      --seed 2 --peer-seed 1 "${bytes[@]}" >"$log/b.out" 2>"$log/b.err" || rc=$?
    kill "$srv_pid" 2>/dev/null || true
    wait "$srv_pid" 2>/dev/null || true
    local relayed_packets
    relayed_packets=$(sed -n 's/.* relayed_packets=\([0-9]*\).*/\1/p' "$log/srv.err" | tail -n1)
    relayed_packets=${relayed_packets:-missing}
    local timing
    timing="$(grep -h '^connected_ms=\|^echo_mbit_s=' "$log/b.out" 2>/dev/null | tr '\n' ' ')regserver relayed_packets=$relayed_packets"
    if [ "$rc" != 0 ] || ! grep -q '^echo_ms=' "$log/b.out" \
      || ! grep -q '^eid=.* observed=192\.0\.2\.2:' "$log/b.out"; then
      verdict="UNEXPECTED: dial exit $rc"
    elif [ "$expect" = direct ] && grep -q '^relayed=false' "$log/b.out" \
      && [ "$relayed_packets" = 0 ]; then
      verdict="connect_eid and an echoed stream, direct ($timing)"
      if [ "$variant" = early-initiation ]; then
        if ! in_ns ra nft list table ip lab | grep -q 'counter packets 1 '; then
          verdict="LAB FAILURE (the router did not drop the first initiation)"
        elif grep -q 'punch probe: initiation sent again' "$log/b.err"; then
          verdict="$verdict; first initiation dropped, sent again on the listener's PUNCH"
        else
          verdict="UNEXPECTED: the initiation was not sent again on the listener's PUNCH"
        fi
      fi
    elif [ "$expect" = relayed ] && grep -q '^relayed=true' "$log/b.out" \
      && [ "$relayed_packets" != missing ] && [ "$relayed_packets" -gt 0 ]; then
      verdict="connect_eid and an echoed stream through the relay ($timing)"
    else
      verdict="UNEXPECTED: expected $expect, got $(grep -h '^relayed=' "$log/b.out"), $timing"
    fi
  fi
  echo "nat-lab: $name (A $2, B $3): $verdict"
  summary+=("$name: $verdict")
  if [[ "$verdict" == LAB* || "$verdict" == UNEXPECTED* ]]; then
    failures=$((failures + 1))
    for f in srv.err a.out a.err b.out b.err; do echo "--- $name/$f"; cat "$log/$f" 2>/dev/null; done
  fi
  teardown
}

scenario cone-control cone cone control
scenario cone-cone cone cone direct
scenario sym-sym sym sym none
scenario cone-sym cone sym none
host_dial host-dial-cone-cone cone cone direct
host_dial host-dial-early-initiation cone cone direct early-initiation
host_dial host-dial-sym-sym sym sym relayed
host_dial host-dial-cone-sym cone sym relayed

echo "nat-lab: summary"
for line in "${summary[@]}"; do echo "  $line"; done
if [ "$failures" != 0 ]; then
  echo "nat-lab: $failures scenario(s) did not behave as expected" >&2
  exit 1
fi
echo "nat-lab: every scenario behaved as expected"
