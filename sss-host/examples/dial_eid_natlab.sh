#!/usr/bin/env bash
# NAT lab for dial-by-EID (see dial_eid.rs): wan (regserver 203.0.113.1), two masquerading routers with
# port-restricted filtering (unsolicited WAN packets dropped in the input hook), h1 and h2
# behind them. Usage: natlab.sh up|down
set -euo pipefail
P=hr   # namespace prefix
up() {
  for n in wan nat1 nat2 h1 h2; do ip netns add $P-$n; ip -n $P-$n link set lo up; done
  ip -n $P-wan link add br0 type bridge; ip -n $P-wan link set br0 up
  ip -n $P-wan addr add 203.0.113.1/24 dev br0
  for i in 1 2; do
    ip link add $P-w$i netns $P-wan type veth peer name wan netns $P-nat$i
    ip -n $P-wan link set $P-w$i master br0 up
    ip -n $P-nat$i addr add 203.0.113.1$i/24 dev wan; ip -n $P-nat$i link set wan up
    ip link add lan netns $P-nat$i type veth peer name eth0 netns $P-h$i
    ip -n $P-nat$i addr add 192.168.$i.1/24 dev lan; ip -n $P-nat$i link set lan up
    ip -n $P-h$i addr add 192.168.$i.2/24 dev eth0; ip -n $P-h$i link set eth0 up
    ip -n $P-h$i route add default via 192.168.$i.1
    ip netns exec $P-nat$i sysctl -qw net.ipv4.ip_forward=1
    ip netns exec $P-nat$i nft -f - <<NFT
table ip nat {
  chain post { type nat hook postrouting priority 100; oifname "wan" masquerade ${RANDOM_NAT:+random}; }
}
table ip filter {
  chain input { type filter hook input priority 0; iifname "wan" ct state established,related accept; iifname "wan" drop; }
  chain forward { type filter hook forward priority 0; iifname "wan" ct state established,related accept; iifname "wan" drop; }
}
NFT
  done
}
down() { for n in wan nat1 nat2 h1 h2; do ip netns del $P-$n 2>/dev/null || true; done; }
"$@"
