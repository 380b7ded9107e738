#!/bin/sh
# /usr/bin/cortexd: cortexd runs from its own Python environment (see /opt/cortexd/build-venv).
VENV=/opt/cortexd/venv
if [ ! -x "$VENV/bin/cortexd" ]; then
    echo "cortexd: $VENV is missing or incomplete; rebuild it with: sudo /opt/cortexd/build-venv" >&2
    exit 127
fi
exec "$VENV/bin/cortexd" "$@"
