# Sourced by tests/run, tests/interop/run and deploy/check: makes (or reuses) target/py-venv with the
# pinned tests/requirements.txt and sets $venv. Needs python3 and PyPI on the first run.
venv=$(pwd)/target/py-venv
if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/requirements.txt "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt "$venv/requirements.txt"
fi
