"""The MLA model families of Transformers, and which of them attn_implementation="flash_mla" serves.

MLA_FAMILIES names the model types whose modeling module defines multi-head latent attention. `discover()`
imports those the installed Transformers has, finds their attention classes by structure (a forward that
projects through kv_a_proj_with_mqa) and reads each class's form from the names its forward reads
(mla_adapter.mla_form): a class is served when its maths is the adapter's (common MLA parts plus known
hooks), refused otherwise with the reason. So a family is added by its model type alone, and a release that
changes a family's attention maths makes it refused (with what changed), never silently wrong.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import torch

from hf_flashmla.transformers_integration.mla_adapter import (MLAForm, UnservedAttention, mla_form,
                                                              reads_latent_projection)

MLA_FAMILIES = (
    # Dense MLA, each forward checked line by line against the adapter on transformers 5.17 and 5.25:
    "deepseek_v2",     # complex rope (also DeepSeek-V2-Lite)
    "deepseek_v3",     # rope_interleave from the config; also Kimi-K2 and the text model of kimi_k25
    "glm4_moe_lite",   # GLM-4.7-Flash: DeepSeek-V3's attention (20 heads, v_head_dim 256)
    "longcat_flash",   # two MLA sublayers per decoder layer (layer_idx * 2 + i), mla_scale_q/kv_lora
    "kimi_linear",     # NoPE MLA layers between KDA linear-attention layers (HybridLatentCache)
    "bailing_hybrid",  # per-head sigmoid output gate; MLA between linear-attention layers (5.25 only)
    "mistral4",        # Llama-4 per-position query scale; kv_lora_rank 256 (reference path only)
    "minicpm3",        # plain rope; kv_lora_rank 256, rope 32 (reference path only)
    "youtu",           # DeepSeek-V3's attention
    "axk1",            # DeepSeek-V3's attention, query always through q_a/q_b
    # DSA (sparse) MLA: an indexer picks top-k keys per query; refused (no sparse decode kernel here):
    "deepseek_v32", "glm_moe_dsa", "glm5_next", "axk2", "hy_v4", "hy_v4_vl", "dots3_note", "mistral_large4",
)
# Model types that have only a config of their own: Transformers' auto classes build them as another MLA family's
# model classes, so flash_mla serves (or refuses) them as that family, by class.
CONFIG_ONLY_FAMILIES = {
    "sarvam_mla": "deepseek_v3",  # Sarvam-105B: a DeepSeek-V3 config (legacy keys translated), DeepseekV3ForCausalLM
}


@dataclass
class Family:
    model_type: str
    model_classes: tuple           # the PreTrainedModel classes of the modeling module
    attention_classes: dict        # MLA attention class -> MLAForm (served) or UnservedAttention (refused)

    @property
    def served(self) -> bool:
        return bool(self.attention_classes) and all(isinstance(form, MLAForm)
                                                    for form in self.attention_classes.values())

    @property
    def generating_classes(self) -> tuple:
        """The model classes generate() runs (their forward takes the prefill budget, prefill_blocks)."""
        from transformers import GenerationMixin

        return tuple(cls for cls in self.model_classes if issubclass(cls, GenerationMixin))

    @property
    def decoder_stack_classes(self) -> tuple:
        """The base models that run the decoder layers (e.g. DeepseekV3Model): neither a generating class nor
        the shared PreTrainedModel base, and holding the layers (a task head wraps one of them)."""
        from transformers import GenerationMixin

        return tuple(cls for cls in self.model_classes
                     if not issubclass(cls, GenerationMixin) and cls.__name__.endswith("Model")
                     and not cls.__name__.endswith("PreTrainedModel"))

    @property
    def refusal(self) -> UnservedAttention | None:
        """The first refused attention class's reason, or None when the family is served."""
        for form in self.attention_classes.values():
            if isinstance(form, UnservedAttention):
                return form
        return None


def _defined_in(module, base) -> list:
    return [value for value in vars(module).values()
            if inspect.isclass(value) and issubclass(value, base) and value.__module__ == module.__name__]


def family_of_module(model_type: str, modeling) -> Family:
    from transformers import PreTrainedModel

    attention = {}
    for cls in _defined_in(modeling, torch.nn.Module):
        if issubclass(cls, PreTrainedModel) or not reads_latent_projection(cls):
            continue
        try:
            attention[cls] = mla_form(cls)
        except UnservedAttention as reason:
            attention[cls] = reason
    return Family(model_type, tuple(_defined_in(modeling, PreTrainedModel)), attention)


def has_config(model_type: str) -> bool:
    """Whether the installed Transformers knows this model type (its config is registered)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def modeling_module(model_type: str):
    """The family's modeling module in the installed Transformers, or None where it is not in this release (or not
    importable here): nothing of it to serve or refuse."""
    try:
        return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    except Exception:
        return None


def in_this_release(model_type: str) -> bool:
    """Whether the installed Transformers has this family: its modeling module imports (for a config-only one,
    CONFIG_ONLY_FAMILIES, its config is registered)."""
    if model_type in CONFIG_ONLY_FAMILIES:
        return has_config(model_type)
    return modeling_module(model_type) is not None


def discover(model_types=MLA_FAMILIES) -> dict[str, Family]:
    """model type -> Family, for those of model_types the installed Transformers has."""
    found = {}
    for model_type in model_types:
        modeling = modeling_module(model_type)
        if modeling is not None:
            found[model_type] = family_of_module(model_type, modeling)
    return found
