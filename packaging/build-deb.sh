#!/usr/bin/env bash
# Build dist/cortexd_<version>_<arch>.deb with dpkg-deb (no debhelper needed).
#
#   packaging/build-deb.sh [VERSION]        VERSION defaults to cortexd.__version__
#
# Environment:
#   PYTHON               interpreter that builds the wheel (needs pip, setuptools, wheel;
#                        default: the repository's .venv, else python3)
#   DIST_DIR             output folder (default <repo>/dist)
#   CORTEXD_WHEEL        use this cortexd wheel instead of building one
#   CORTEXD_WHEELHOUSE   folder of wheels to bundle (cortexd's dependencies), making the
#                        install offline; e.g. made with: .venv/bin/pip wheel -w wheelhouse .
#                        Wheels are tied to a Python version, so the package then depends
#                        on the build interpreter's python3.X.
# Prints the path of the .deb on its last line.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
VERSION=${1:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/cortexd/__init__.py")}
if [[ ! "$VERSION" =~ ^[0-9][A-Za-z0-9.+~-]*$ ]]; then
    echo "build-deb: invalid Debian version '$VERSION' (digits first; letters, digits, . + ~ -; no epoch)" >&2
    exit 2
fi
ARCH=$(dpkg --print-architecture)
DIST=${DIST_DIR:-$REPO/dist}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STAGE="$WORK/root"
OPT="$STAGE/opt/cortexd"
mkdir -p "$STAGE/DEBIAN" "$STAGE/usr/bin" "$STAGE/lib/systemd/system" "$STAGE/etc/cortexd" "$OPT/wheels"

# 1. cortexd's wheel, built from a copy of the sources so that nothing (build/,
#    *.egg-info) is written into the repository.
if [[ -n "${CORTEXD_WHEEL:-}" ]]; then
    cp "$CORTEXD_WHEEL" "$OPT/wheels/"
else
    mkdir -p "$WORK/src"
    cp "$REPO/pyproject.toml" "$REPO/setup.py" "$WORK/src/"
    cp -r "$REPO/cortexd" "$WORK/src/"
    find "$WORK/src" -name __pycache__ -type d -prune -exec rm -rf {} +
    pipw=("$PYTHON" -m pip wheel --quiet --no-deps --disable-pip-version-check --wheel-dir "$OPT/wheels" "$WORK/src")
    # Without build isolation first (offline, uses the interpreter's setuptools), provided that
    # setuptools is as new as pyproject.toml's [build-system] asks (an older one does not read
    # [project] and would build an UNKNOWN-0.0.0 wheel); pips without --check-build-dependencies
    # (before 22.1) fail here too. Then with build isolation (setuptools from the index).
    "${pipw[@]}" --no-build-isolation --check-build-dependencies 2>"$WORK/pip.err" || "${pipw[@]}" \
        || { cat "$WORK/pip.err" >&2; exit 1; }
fi
ls "$OPT"/wheels/cortexd-*.whl >/dev/null

DEPENDS="python3 (>= 3.10), python3-venv, passwd"
if [[ -n "${CORTEXD_WHEELHOUSE:-}" ]]; then
    find "$CORTEXD_WHEELHOUSE" -maxdepth 1 -name '*.whl' ! -name 'cortexd-*' -exec cp {} "$OPT/wheels/" \;
    pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    next=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')
    DEPENDS="python3 (>= $pyver), python3 (<< $next), python3-venv, passwd"
fi

# 2. Files.
install -m 0755 "$HERE/build-venv" "$OPT/build-venv"
echo "$VERSION" > "$OPT/VERSION"
install -m 0755 "$HERE/cortexd.sh" "$STAGE/usr/bin/cortexd"
install -m 0644 "$REPO/units/cortexd.service" "$STAGE/lib/systemd/system/cortexd.service"
install -m 0644 "$HERE/etc/cortex.yaml" "$STAGE/etc/cortexd/cortex.yaml"
install -m 0644 "$HERE/etc/venv-requirements.txt" "$STAGE/etc/cortexd/venv-requirements.txt"
install -m 0644 "$REPO/units/cortexd.env" "$STAGE/etc/cortexd/cortexd.env"
install -d -m 0755 "$STAGE/etc/cortexd/examples/iris"
install -m 0644 "$HERE/etc/examples/iris/predictor.py" "$HERE/etc/examples/iris/sample.json" \
    "$STAGE/etc/cortexd/examples/iris/"
find "$STAGE" -type d -exec chmod 0755 {} +
chmod 0644 "$OPT"/wheels/*.whl "$OPT/VERSION"

# 3. Control files. Every file under /etc must be a conffile (dpkg then keeps the admin's
#    edits on upgrade and removal); check that the list is complete.
install -m 0755 "$HERE/debian/postinst" "$HERE/debian/prerm" "$HERE/debian/postrm" "$STAGE/DEBIAN/"
install -m 0644 "$HERE/debian/conffiles" "$STAGE/DEBIAN/conffiles"
diff <(cd "$STAGE" && find etc -type f | sed 's|^|/|' | sort) <(sort "$HERE/debian/conffiles") >&2 \
    || { echo "build-deb: packaging/debian/conffiles does not list exactly the files under /etc" >&2; exit 1; }
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@INSTALLED_SIZE@/$SIZE/" -e "s/@DEPENDS@/$DEPENDS/" \
    "$HERE/debian/control.in" > "$STAGE/DEBIAN/control"
chmod 0644 "$STAGE/DEBIAN/control"

# 4. The package; root:root owners without fakeroot.
mkdir -p "$DIST"
OUT="$DIST/cortexd_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group --build "$STAGE" "$OUT" >/dev/null
echo "$OUT"
