#!/usr/bin/env bash
# A GPU round longer than one device call (10 minutes at most): started detached, then polled.
#
# On the device machine, from the repository root, the first call:
#   bash scripts/background_round.sh start \
#     'BATCHES=1,64 BUILD_GPUS=2 PROFILE_BATCHES=1,64 STEPS="build maxbench profile" bash scripts/gpu_round.sh'
# then, each started within the machine's idle window (30 s) after the last one returned:
#   bash scripts/background_round.sh poll
#
# Every call waits up to WAIT_S seconds (default 530) for the round to end, prints the end of its
# log, and packs the round's log, exit status and output folder (not its builds) into
# $OUT/round.tgz, so each call brings back what the round has written so far. The round runs with
# OUT=$ROUND/out. ROUND (default /tmp/presto-round) is where it keeps its log (log), its process
# id (pid), its exit status once it has ended (rc) and that output folder (out/). Exits 2 on a
# usage error or when a round is already running; otherwise 0, whatever the round's status.
#
# The round runs in $ROUND/src, a copy of this repository made at start (git's files, tracked and
# untracked-not-ignored, its .git and the carried .whl): each device call sends the working tree
# again and replaces it, so a round running in the tree itself loses its files at the next poll
# (at 1295cfc a join started then failed with ENOENT, and every later process with it).
# Relative paths (gpu_round.sh's default ENGINES under artifacts/) land in that copy, which the
# next start removes with $ROUND: give ENGINES an absolute path outside it to keep a build.
set -u
ROUND=${ROUND:-/tmp/presto-round}
WAIT_S=${WAIT_S:-530}
POLL_S=${POLL_S:-5}
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
copy_repository() {  # copy_repository DEST: git's files of $REPO, its .git and .whl, into DEST
  if ! git -C "$REPO" rev-parse --git-dir > /dev/null 2>&1; then
    tar -C "$REPO" --exclude=./artifacts -cf - . | tar -C "$1" -xf -
    return
  fi
  (
    cd "$REPO" || exit 1
    { git ls-files -co --exclude-standard; [ -d .whl ] && find .whl -type f; } |
      while IFS= read -r f; do [ -f "$f" ] && printf '%s\n' "$f"; done |
      tar -cf - -T - .git
  ) | tar -C "$1" -xf -
}
case ${1:-} in
  start)
    if [ -z "${2:-}" ]; then
      echo "start needs the round's command line as one argument" >&2
      usage
      exit 2
    fi
    if [ -e "$ROUND/pid" ] && [ ! -e "$ROUND/rc" ] && kill -0 "$(cat "$ROUND/pid")" 2>/dev/null; then
      echo "a round is running already (pid $(cat "$ROUND/pid"), log $ROUND/log): poll it" >&2
      exit 2
    fi
    rm -rf "$ROUND" && mkdir -p "$ROUND/out" "$ROUND/src" || exit 1
    copy_repository "$ROUND/src" || { echo "could not copy the repository into $ROUND/src" >&2; exit 1; }
    # $2 is the caller's command line, run as written in a shell of its own, in the copy.
    ROUND_CMD=$2 setsid nohup bash -c \
      'export OUT="$0/out"; cd "$0/src" && bash -c "$ROUND_CMD"; echo $? > "$0/rc.tmp" && mv "$0/rc.tmp" "$0/rc"' \
      "$ROUND" > "$ROUND/log" 2>&1 < /dev/null &
    echo $! > "$ROUND/pid"
    echo "round started (pid $!): $2"
    ;;
  poll)
    if [ ! -d "$ROUND" ]; then
      echo "no round in $ROUND: start one first" >&2
      exit 2
    fi
    ;;
  *)
    usage
    exit 2
    ;;
esac
end=$((SECONDS + WAIT_S))
while [ $SECONDS -lt $end ] && [ ! -e "$ROUND/rc" ]; do sleep "$POLL_S"; done
tail -n "${TAIL:-30}" "$ROUND/log"
if [ -e "$ROUND/rc" ]; then
  echo "round ended: exit $(cat "$ROUND/rc")"
else
  echo "round still running after this call's ${WAIT_S} s: poll again within the idle window"
fi
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  tar czf "$OUT/round.tgz" -C "$ROUND" --exclude=./pid --exclude=./src . && echo "packed into $OUT/round.tgz"
fi
