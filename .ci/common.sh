# Sourced by .ci/run and tools/transformers_releases.sh: how a test venv is made, and which tests depend on the
# transformers release (the integration, the cache's Cache API, tp_plan and device_map).
RELEASE_DEPENDENT_TESTS=(tests/test_integration_*.py tests/test_latent_cache.py tests/test_multi_device.py)

make_venv() {  # make_venv DIR [extra requirements...]
    python3 -m venv "$1"
    # torch is pinned to the CPU wheel on purpose: an unpinned torch pulls a multi-GB CUDA build.
    # setuptools comes first because the install runs without build isolation (setup.py imports torch
    # to decide whether to build the CUDA extension).
    "$1/bin/python" -m pip install torch==2.13.0 setuptools
    "$1/bin/python" -m pip install --no-build-isolation -e ".[test]" "${@:2}"
}
