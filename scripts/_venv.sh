# Sourced by scripts/run and scripts/test: a project virtualenv, (re)installed when
# pyproject.toml or constraints.txt changes.
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ] || [ constraints.txt -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  # The ranges live in pyproject.toml; constraints.txt pins what they resolved to (scripts/lock).
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
  touch .venv/.installed
fi
