"""What differs between the supported transformers releases, in one place."""
from __future__ import annotations


def cache_kwarg() -> str:
    """The name generate() and the models take the cache under: "cache" from 5.24 on, "past_key_values"
    before (ALL_CACHE_NAMES[0] of the installed release)."""
    from transformers.generation.utils import ALL_CACHE_NAMES
    return ALL_CACHE_NAMES[0]
