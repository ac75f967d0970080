# Sourced by scripts/serve and scripts/test: make .venv hold an up-to-date install of avr (with test extras).
# Uses a "strict" editable install so that twistd finds the top-level twisted/plugins/avr_plugin.py.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "avr needs Python >= 3.11 (found: $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11+" >&2
        exit 1
    }
    "$python" -m venv "$venv"
fi
# Re-install only when the packaging or the set of files changed (a strict editable install links files one by one).
stamp=$(cd "$root" && { cat setup.cfg pyproject.toml; find src twisted -name '*.py' | sort; } | sha256sum | cut -c1-16)
exec 9>"$venv/.avr-install-lock"
flock 9
if [ "$(cat "$venv/.avr-install-stamp" 2>/dev/null)" != "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --config-settings editable_mode=strict -e "$root[test]"
    echo "$stamp" > "$venv/.avr-install-stamp"
fi
flock -u 9
export PATH="$venv/bin:$PATH"
cd "$root"
