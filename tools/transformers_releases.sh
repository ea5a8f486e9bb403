#!/usr/bin/env bash
# Every minor release of the supported transformers range (hf_flashmla/transformers_range.py), the newest patch of
# each, against the tests that depend on the release (the set .ci/run runs on the oldest one): one venv, one release
# after another, a summary last. .ci/run tests the two ends on every change; this covers the releases between them
# (about a minute and a half each on two cores). Run from anywhere:   bash tools/transformers_releases.sh
# VENV (default .venv-releases) is reused when it exists.
set -uo pipefail
cd "$(dirname "$0")/.."

read -r MAJOR FIRST LAST < <(python3 -c "
import runpy
r = runpy.run_path('hf_flashmla/transformers_range.py')
(major, first), (last_major, last) = r['OLDEST_MINOR'], r['NEWEST_TESTED_MINOR']
assert major == last_major, 'the range spans two major releases: list them here by hand'
print(major, first, last)")
source .ci/common.sh  # make_venv, RELEASE_DEPENDENT_TESTS (as .ci/run)
VENV=${VENV:-.venv-releases}
[[ -x "$VENV/bin/python" ]] || make_venv "$VENV"

summary=()
status=0
for minor in $(seq "$FIRST" "$LAST"); do
    if ! "$VENV/bin/python" -m pip install -q "transformers~=$MAJOR.$minor.0"; then
        summary+=("$MAJOR.$minor: not installable")
        status=1
        continue
    fi
    version=$("$VENV/bin/python" -c "import transformers; print(transformers.__version__)")
    echo "=== transformers $version"
    log=$(mktemp)
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${RELEASE_DEPENDENT_TESTS[@]}" > "$log" 2>&1
    rc=$?
    cat "$log"
    (( rc == 0 )) || status=1
    summary+=("$version: $(tail -1 "$log")")
    rm -f "$log"
done
echo "=== summary"
printf '%s\n' "${summary[@]}"
exit $status
