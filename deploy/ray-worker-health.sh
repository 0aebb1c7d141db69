#!/bin/sh
# The ray-worker container's health check: sh deploy/ray-worker-health.sh HEAD_ADDRESS
#
# Healthy once the head answers and this node's raylet runs (a raylet joins the cluster
# as it starts). The packer starts only on healthy workers (docker-compose.yml), so when
# it places its streamers every worker is a node to place one on.
set -eu
ray health-check --address="$1"
for cmdline in /proc/[0-9]*/cmdline; do
  case "$(tr '\0' ' ' <"$cmdline" 2>/dev/null)" in
    *raylet/raylet*) exit 0 ;;
  esac
done
echo "no raylet runs in this container" >&2
exit 1
