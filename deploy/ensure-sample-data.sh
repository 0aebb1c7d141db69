#!/bin/sh
# sh deploy/ensure-sample-data.sh DATASET IMAGES
# Writes the sample data set (IMAGES JPEGs) at DATASET when DATASET is a local path that
# does not exist yet; a real data set (an existing folder or a URI) is left alone.
set -eu
dataset="$1"
images="${2:-400}"
case "$dataset" in
  *://*) echo "data set $dataset is a URI: nothing to write"; exit 0 ;;
esac
if [ -e "$dataset" ]; then
  echo "data set $dataset is present"
  exit 0
fi
navit sample-data "$dataset.partial" --images "$images" --seed 0
# Renamed only when complete: an interrupted run leaves no half data set behind.
mv "$dataset.partial" "$dataset"
