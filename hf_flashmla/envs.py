"""Every HF_FLASHMLA_* environment setting of the package, in one place.

| name                     | values                                 | read                                      |
|--------------------------|----------------------------------------|-------------------------------------------|
| HF_FLASHMLA_BUILD_EXT    | unset, 1, 0                            | by setup.py, at install                   |
| HF_FLASHMLA_BACKEND      | auto (unset), reference, cuda_sm90,    | at each flash_mla_with_kvcache call and   |
|                          | triton                                 | each hf_flashmla.backend() call           |
| HF_FLASHMLA_CHECK_VALUES | 0 (unset), 1 (also true, yes, on)      | at each flash_mla_with_kvcache call that  |
|                          |                                        | passes no check_values                    |

HF_FLASHMLA_BUILD_EXT: build the CUDA extension where torch has CUDA and nvcc is found (unset), always and
    loudly (1), never (0: a CPU install in seconds).
HF_FLASHMLA_BACKEND: which path decodes (hf_flashmla/dispatch.py): auto = the sm_90 kernel where it applies,
    else Triton on CUDA, else the PyTorch reference; a forced path raises RuntimeError where it cannot run.
HF_FLASHMLA_CHECK_VALUES: on CUDA, also run the checks that read tensor values (lengths, block ids, the
    schedule), at the cost of a device->host sync per call; they always run on CPU.

Each setting is read where it is used, when it is used: never at import (so setting one after
`import hf_flashmla` works) and never by compiled code. Reading one costs a dictionary lookup, so the hot path
may read it on every call. To add a setting: define it below with Setting(name, choices, doc), add it to
SETTINGS and to the table above, and read it with .value() where it is used (at most six settings in all).
"""
from __future__ import annotations

import os

# CPython keeps os.environ's items encoded in this mapping; os.environ[...] = ... and putenv through os.environ
# update it. Looking a key up here costs ~30 ns, os.environ.get ~0.4 us (~3 us for an unset name).
_ENVIRON_DATA = getattr(os.environ, "_data", None)
_ENCODE_KEY = getattr(os.environ, "encodekey", None)
_DECODE_VALUE = getattr(os.environ, "decodevalue", None)


class Setting:
    """One environment setting: its name, its values (normalised: stripped, lower case; the first is the
    default) and what it does."""
    __slots__ = ("name", "choices", "doc", "_key")

    def __init__(self, name: str, choices: tuple[str, ...], doc: str):
        self.name, self.choices, self.doc = name, choices, doc
        self._key = _ENCODE_KEY(name) if _ENCODE_KEY is not None else None

    def __repr__(self):
        return f"Setting({self.name!r})"

    def raw(self) -> str | None:
        """The variable's value as set (None where unset), read now."""
        if _ENVIRON_DATA is None or self._key is None or _DECODE_VALUE is None:
            return os.environ.get(self.name)
        value = _ENVIRON_DATA.get(self._key)
        return None if value is None else _DECODE_VALUE(value)

    def value(self, raw: str | None = None) -> str:
        """The setting's normalised value (raw: what raw() returned, to parse it once); ValueError naming the
        variable for a value outside its choices. Unset or empty gives the default."""
        text = (self.raw() if raw is None else raw) or ""
        text = text.strip().lower()
        if not text:
            return self.choices[0]
        if text not in self.choices:
            raise ValueError(f"{self.name}: expected one of {', '.join(repr(c) for c in self.choices)}, got {text!r}")
        return text


BUILD_EXT = Setting("HF_FLASHMLA_BUILD_EXT", ("", "1", "0"), "build the CUDA extension (setup.py)")
BACKEND = Setting("HF_FLASHMLA_BACKEND", ("auto", "reference", "cuda_sm90", "triton"), "force a decode path")
CHECK_VALUES = Setting("HF_FLASHMLA_CHECK_VALUES", ("0", "1", "false", "true", "no", "yes", "off", "on"),
                       "run the value checks on CUDA too")
SETTINGS = (BUILD_EXT, BACKEND, CHECK_VALUES)


def check_values_requested(raw: str | None) -> bool:
    """HF_FLASHMLA_CHECK_VALUES's meaning, from its raw value (None: unset)."""
    return raw is not None and CHECK_VALUES.value(raw) in ("1", "true", "yes", "on")
