"""The transformers releases that attn_implementation="flash_mla" supports: the one place that says so.

OLDEST is the first release whose DeepSeek-V2/V3 code and Cache API the integration follows; NEWEST_TESTED
is the newest release the whole test suite has passed on. The install requirement allows the patch releases
of NEWEST_TESTED's minor and nothing newer: a new minor release can change the Cache API or the models
(5.25 added activate_past_recording(recurrent_states_to_keep=...) and sharded DeepSeek-V3's attention under
tp_plan), so it is added here after the suite passes on it.

Read by setup.py (without importing the package, which needs torch), by the registration's version check
(hf_flashmla.transformers_integration.register), by .ci/run, which tests both ends, and by
tools/transformers_releases.sh, which tests every minor release between them. Plain constants and no imports, so
that all of them can read it.
"""

OLDEST = "5.17.0"
NEWEST_TESTED = "5.25.0"


def minor(version: str) -> tuple[int, int]:
    """"5.25.0" (or "5.26.0.dev0") -> (5, 25); ValueError when the first two parts are not numbers."""
    major, minor_part = version.split(".")[:2]
    return int(major), int(minor_part)


# Releases below OLDEST are refused; releases past NEWEST_TESTED's minor are registered with a warning.
OLDEST_MINOR = minor(OLDEST)
NEWEST_TESTED_MINOR = minor(NEWEST_TESTED)
REQUIREMENT = f"transformers>={OLDEST},<{NEWEST_TESTED_MINOR[0]}.{NEWEST_TESTED_MINOR[1] + 1}"
