#!/usr/bin/env bash
# A real S3 + SQS + DynamoDB server (moto, pinned) on 127.0.0.1 for tests and demos, and in the
# same venv pyarrow (pinned), which the tests use to read exports as Spark or Athena would.
#   scripts/local-aws.sh start   installs moto into a venv if needed, starts it, waits until it
#                                answers, and prints the environment to use it (eval-able)
#   scripts/local-aws.sh stop    stops the server started by `start`, by its PID
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
MOTO_VERSION=5.2.5
PYARROW_VERSION=26.0.1
STATE_DIR="${SLEEPER_LOCAL_AWS_DIR:-$HOME/.cache/sleeper-export/local-aws}"
VENV="$STATE_DIR/venv-moto-$MOTO_VERSION"
PORT="${SLEEPER_LOCAL_AWS_PORT:-5055}"
PID_FILE="$STATE_DIR/moto-$PORT.pid"
LOG="$STATE_DIR/moto-$PORT.log"

start() {
  mkdir -p "$STATE_DIR"
  if [ ! -x "$VENV/bin/moto_server" ]; then
    echo "installing moto[server]==$MOTO_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
  fi
  if ! "$VENV/bin/python" -c "import pyarrow" 2>/dev/null; then
    echo "installing pyarrow==$PYARROW_VERSION into $VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "pyarrow==$PYARROW_VERSION" >&2
  fi
  if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    kill "$(cat "$PID_FILE")" || true
  fi
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
  echo $! >"$PID_FILE"
  for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$PORT/moto-api/" >/dev/null; then
      cat <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test SLEEPER_TEST_PYTHON=$VENV/bin/python
ENV
      return 0
    fi
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      echo "moto exited at start; its log ($LOG):" >&2
      cat "$LOG" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "moto did not answer on 127.0.0.1:$PORT within 30 s; its log ($LOG):" >&2
  cat "$LOG" >&2
  return 1
}

stop() {
  if [ -f "$PID_FILE" ]; then
    kill "$(cat "$PID_FILE")" 2>/dev/null || true
    rm -f "$PID_FILE"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
