"""attn_implementation="flash_mla" for the MLA models of Transformers: the names callers use. How it hooks in is
registration.py (register() runs on `import hf_flashmla`); the paged attention forward is attention.py, the model
families and their structural adapter families.py and mla_adapter.py, CUDA-graph decoding decode_graphs.py and
budgeted prefill prefill_blocks.py.
"""
from hf_flashmla.transformers_integration.attention import ATTN_IMPLEMENTATION
from hf_flashmla.transformers_integration.compat import cache_kwarg
from hf_flashmla.transformers_integration.registration import (attn_implementation_for, call_counts, flash_mla_mask,
                                                               refused_families, register, reset_call_counts,
                                                               served_families, uses_flash_mla)

__all__ = ["ATTN_IMPLEMENTATION", "attn_implementation_for", "cache_kwarg", "call_counts", "flash_mla_mask",
           "refused_families", "register", "reset_call_counts", "served_families", "uses_flash_mla"]
