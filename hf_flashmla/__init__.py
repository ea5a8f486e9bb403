"""FlashMLA-compatible multi-head latent attention decoding for Hopper, packaged for Transformers."""
from hf_flashmla.backend import BackendChoice, backend
from hf_flashmla.interface import FlashMLASchedMeta, flash_mla_with_kvcache, get_mla_metadata
from hf_flashmla.reference import mla_decode_reference

__version__ = "0.1.0"  # keep in step with setup.py

__all__ = [
    "BackendChoice",
    "FlashMLASchedMeta",
    "__version__",
    "backend",
    "flash_mla_with_kvcache",
    "get_mla_metadata",
    "mla_decode_reference",
]
