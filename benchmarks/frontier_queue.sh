#!/usr/bin/env bash
# Run benchmarks/frontier_distill.sh for each line of a queue file, one after the other, starting none that would end
# after DEADLINE (HH:MM UTC, today): line = "MINUTES NAME TASK SEED VARIANT [options...]" (MINUTES: expected
# length); env FROM=... / SPLITS=... as leading words after MINUTES ("FROM=scr_x_s0", "SPLITS=dev+test").
#   benchmarks/frontier_queue.sh queue.txt 02:15
QUEUE=$1; DEADLINE=$(date -u -d "$2" +%s)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cp "$ROOT/benchmarks/frontier_distill.sh" /tmp/fr/frontier_distill.$$.sh  # bash reads a script as it runs it
sed -i "s|^ROOT=.*|ROOT=$ROOT|" /tmp/fr/frontier_distill.$$.sh
while read -r MIN REST; do
  [ -z "$MIN" ] || [[ $MIN == \#* ]] && continue
  if [ $(( $(date +%s) + MIN * 60 )) -gt "$DEADLINE" ]; then echo "skip (deadline): $MIN $REST"; continue; fi
  ENVS=(); set -- $REST
  while [[ $1 == *=* ]]; do if [[ $1 == SPLITS=* ]]; then ENVS+=("${1//+/ }"); else ENVS+=("$1"); fi; shift; done
  echo "$(date -u +%T) start: $*"; env "${ENVS[@]}" /tmp/fr/frontier_distill.$$.sh "$@" < /dev/null; echo "$(date -u +%T) end: $1"
done < "$QUEUE"
