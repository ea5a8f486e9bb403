"""FlashMLA-compatible multi-head latent attention decoding for Hopper, packaged for Transformers."""
from hf_flashmla.dispatch import BackendChoice, backend
from hf_flashmla.hybrid_cache import HybridLatentCache
from hf_flashmla.interface import FlashMLASchedMeta, flash_mla_with_kvcache, get_mla_metadata
from hf_flashmla.latent_cache import LatentCacheFullError, LatentPagedCache
from hf_flashmla.reference import mla_decode_reference

from hf_flashmla.transformers_integration import register as _register_transformers_integration

# attn_implementation="flash_mla" for the MLA models of Transformers (no-op without transformers).
_register_transformers_integration()

__version__ = "0.1.0"  # the one version: pyproject.toml reads it from here

__all__ = [
    "BackendChoice",
    "FlashMLASchedMeta",
    "HybridLatentCache",
    "LatentCacheFullError",
    "LatentPagedCache",
    "__version__",
    "backend",
    "flash_mla_with_kvcache",
    "get_mla_metadata",
    "mla_decode_reference",
]
