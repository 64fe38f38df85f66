#!/bin/sh
# forget-docker-network.sh FORWARD_POLICY IP_FORWARD: after a dockerd this test started has stopped, remove what
# it leaves in the host's network (its iptables chains and rules, its bridges) and put back the FORWARD chain's
# policy and ip_forward as they were before it started.
for rule in "-D FORWARD -j DOCKER-USER" "-D FORWARD -j DOCKER-ISOLATION-STAGE-1"; do iptables $rule 2>/dev/null; done
iptables -S FORWARD | grep -E 'docker0|br-' | sed 's/^-A/-D/' | while read -r rule; do eval iptables "$rule"; done
for chain in DOCKER DOCKER-ISOLATION-STAGE-1 DOCKER-ISOLATION-STAGE-2 DOCKER-USER; do
  iptables -F "$chain" 2>/dev/null; iptables -X "$chain" 2>/dev/null
done
iptables -t nat -S | grep -E -- '-j DOCKER$|-j MASQUERADE' | grep -E 'DOCKER|172\.(1[6-9]|2[0-9]|3[01])\.' |
  sed 's/^-A/-D/' | while read -r rule; do eval iptables -t nat "$rule"; done
iptables -t nat -F DOCKER 2>/dev/null; iptables -t nat -X DOCKER 2>/dev/null
for link in $(ip -o link show type bridge | awk -F': ' '{print $2}' | grep -E '^(docker0|br-)'); do ip link del "$link"; done
iptables -P FORWARD "$1"
echo "$2" >/proc/sys/net/ipv4/ip_forward
