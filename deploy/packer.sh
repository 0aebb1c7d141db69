#!/bin/sh
# The packer container's entrypoint: sh deploy/packer.sh RAY_ADDRESS DATASET [navit serve flags]
#
# The packer service is a Ray driver, and Ray runs a driver only on a node of its
# cluster (ray.init looks for a raylet on the local host). So the container first joins
# the cluster as a node with no CPUs for tasks (fill tasks go to the workers, the service
# keeps its cores for Flight), then replaces this shell with `navit serve`, which thus
# gets SIGTERM from `docker stop` and shuts down gracefully.
set -eu
address="$1"
shift
ray start --address="$address" --num-cpus=0 --disable-usage-stats ${RAY_START_EXTRA_ARGS:-}
exec navit serve "$@" --ray-address="$address"
