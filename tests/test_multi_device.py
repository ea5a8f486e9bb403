"""flash_mla across devices, on CPU.

device_map: this machine has one real device, so a second one is the "meta" device: the same accelerate
hook that device_map installs (AlignDevicesHook) runs the last layers on meta, where tensors have shapes but
no data, and only the decode call on meta is stubbed (it cannot compute). What is checked is the placement
logic: each layer's pool on that layer's device, the step tensors and the schedule built once per device
per forward pass, and the CPU layers' pages identical to an all-CPU run.

tp_plan: tools/multi_gpu_check.py --tp under torchrun with 2 CPU processes (gloo). Each model follows the
plan of the installed release, read here from its config class: DeepSeek-V2's plan shards the attention heads
in every supported release; DeepSeek-V3's shards only the MLP and experts up to 5.24 (attention and the latent
cache replicated) and the heads as V2's does from 5.25 on. Greedy tokens equal the single-process run, and
every rank runs its share of heads (all of them where attention is replicated) against its full copy of the
latent cache.
"""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from hf_flashmla import interface
from hf_flashmla.checkpoint import TINY, make_config, random_model
from hf_flashmla.latent_cache import LatentPagedCache
from hf_flashmla.transformers_integration import cache_kwarg

from tools import multi_gpu_check

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

META = torch.device("meta")
CPU = torch.device("cpu")
LATENT = 576


def _write(cache, layer, device, tokens, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed * 31 + layer)
    latent = torch.randn(batch, tokens, LATENT, generator=generator).to(device)
    return cache.write(layer, latent)


def test_cache_pools_on_each_layers_device_and_step_tensors_once_per_device(monkeypatch):
    cache = LatentPagedCache(num_hidden_layers=4, latent_dim=LATENT, initial_pages=2)
    built = []
    original = LatentPagedCache._device_step

    def counting(self, step, device):
        if device not in step.devices:
            built.append((step.step_id, device))
        return original(self, step, device)

    monkeypatch.setattr(LatentPagedCache, "_device_step", counting)
    layer_devices = [CPU, CPU, META, META]
    for step_tokens in (70, 1, 1):  # the first step grows the pools past their initial 2 pages
        states = [_write(cache, layer, device, step_tokens)[2] for layer, device in enumerate(layer_devices)]
        assert states[0] is states[1] and states[2] is states[3] and states[0] is not states[2]
        assert states[0].block_table.device == CPU and states[2].block_table.device == META
        assert states[2].write_slots.device == META
    before = cache.gather(0, states[0], 72)
    assert [cache.pool(layer).device for layer in range(4)] == layer_devices
    assert sorted((step, device.type) for step, device in built) == [(1, "cpu"), (1, "meta"), (2, "cpu"),
                                                                     (2, "meta"), (3, "cpu"), (3, "meta")]
    assert cache.sequence_lengths == [72, 72]
    assert cache.pool(0).shape == cache.pool(3).shape  # one page count for every pool, whatever its device

    # Beam reordering and cropping touch every pool on its own device; the CPU pool's rows follow.
    cache.reorder_cache(torch.tensor([1, 0]))
    states = [_write(cache, layer, device, 1)[2] for layer, device in enumerate(layer_devices)]
    after = cache.gather(0, states[0], 72)
    assert torch.equal(after[0], before[1]) and torch.equal(after[1], before[0])
    assert [cache.pool(layer).device for layer in range(4)] == layer_devices
    cache.crop(-3)
    assert cache.sequence_lengths == [70, 70]


def test_device_map_model_schedules_once_per_device_and_keeps_pages_per_layer_device(monkeypatch):
    config = make_config("deepseek_v3", base=TINY, num_hidden_layers=4, first_k_dense_replace=4)
    model = random_model(config, attn_implementation="flash_mla")
    reference_model = copy.deepcopy(model)
    device_map, layer_devices = multi_gpu_check.layer_split(4, ["cpu", "meta"])
    assert layer_devices == ["cpu", "cpu", "meta", "meta"]
    assert device_map["model.embed_tokens"] == "cpu" and device_map["lm_head"] == "meta"
    model = multi_gpu_check.place_with_hooks(model, device_map)

    real_decode = interface.flash_mla_with_kvcache

    def decode_or_stub(q, k_cache, *args, **kwargs):
        if q.device.type == "meta":  # meta tensors carry no data: only shapes come back
            batch, s_q, h_q, _ = q.shape
            return q.new_empty(batch, s_q, h_q, 512), q.new_empty(batch, h_q, s_q, dtype=torch.float32)
        return real_decode(q, k_cache, *args, **kwargs)

    monkeypatch.setattr(interface, "flash_mla_with_kvcache", decode_or_stub)
    ids = torch.tensor([[5, 17, 33, 2, 9, 71], [0, 0, 40, 8, 19, 3]])
    mask = (ids != 0).long()
    cache, reference_cache = LatentPagedCache(config), LatentPagedCache(config)
    key = cache_kwarg()
    with multi_gpu_check.DeviceCalls() as calls, torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=True, **{key: cache})
        logits = model(input_ids=ids[:, -1:], attention_mask=torch.cat((mask, mask[:, -1:]), 1), use_cache=True,
                       **{key: cache}).logits
    assert logits.device == META
    assert [str(cache.pool(layer).device) for layer in range(4)] == layer_devices
    # Two forward passes, both paged (6 tokens <= the decode chunk): one schedule per device per pass.
    assert calls.metadata == {"cpu": 2, "meta": 2}
    assert calls.api == {"cpu": 4, "meta": 4}
    assert cache.sequence_lengths == [7, 5]  # padding not stored, on either device's bookkeeping

    with torch.no_grad():
        reference_model(input_ids=ids, attention_mask=mask, use_cache=True, **{key: reference_cache})
        reference_model(input_ids=ids[:, -1:], attention_mask=torch.cat((mask, mask[:, -1:]), 1), use_cache=True,
                        **{key: reference_cache})
    for layer in (0, 1):  # the CPU layers' pages match a run without device_map bit for bit
        assert torch.equal(cache.pool(layer), reference_cache.pool(layer))


def test_sharded_query_with_unsharded_kv_b_proj_is_a_clear_error():
    config = make_config("deepseek_v2", base=TINY)
    model = random_model(config, attn_implementation="flash_mla")
    attention = model.model.layers[0].self_attn
    # A q_b_proj cut to half of the heads (as a colwise shard would be) while kv_b_proj keeps all of them.
    half = attention.q_b_proj.out_features // 2
    cut = torch.nn.Linear(attention.q_b_proj.in_features, half, bias=False)
    cut.weight.data.copy_(attention.q_b_proj.weight.data[:half])
    attention.q_b_proj = cut
    with pytest.raises(ValueError, match="kv_b_proj"), torch.no_grad():
        model.generate(torch.tensor([[5, 17, 33]]), max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize("placement", ["from_pretrained", "hooks"])
def test_device_map_dict_matches_one_device(tmp_path, placement):
    """The script's device_map mode with an explicit dict (both shares on the CPU here)."""
    out = tmp_path / "device_map.json"
    code = multi_gpu_check.main(["--devices", "cpu,cpu", "--placement", placement, "--tiny", "--new-tokens", "4",
                                 "--prompt-lengths", "20,70,5", "--workdir", str(tmp_path), "--json", str(out)])
    result = json.loads(out.read_text())
    assert code == 0, result["failures"]
    assert result["split_vs_single"]["identical"] and result["single_vs_eager"]["identical"]
    assert result["pool_devices"] == ["cpu"] * 2
    assert result["kv_cache"]["bytes_per_token_per_layer"] == LATENT * 4
    assert result["paged_steps"] == {"cpu": 3}  # the 70-token prefill runs dense, then 3 decode steps


def _gloo_unavailable():
    import torch.distributed as dist

    if not dist.is_available():
        return "torch.distributed is not available"
    if not dist.is_gloo_available():
        return "the gloo backend is not available"
    return None


def plan_shards_attention_heads(config_class) -> bool:
    """Whether the installed release's tp_plan for this architecture splits the heads: q and kv_b_proj
    colwise, o_proj rowwise (kv_a_proj_with_mqa always keeps the whole latent)."""
    plan = config_class.base_model_tp_plan or {}
    styles = {key.rsplit(".", 1)[-1]: style for key, style in plan.items() if ".self_attn." in key}
    sharded = styles.get("kv_b_proj") == "colwise"
    if sharded:
        query = styles.get("q_b_proj") or styles.get("q_proj")
        assert query == "colwise" and styles.get("o_proj") == "rowwise", plan
    return sharded


@pytest.mark.skipif(_gloo_unavailable() is not None, reason=str(_gloo_unavailable()))
def test_tp_plan_two_cpu_processes_gloo(tmp_path):
    from transformers import DeepseekV2Config, DeepseekV3Config

    out = tmp_path / "tp.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["CUDA_VISIBLE_DEVICES"] = ""  # transformers puts a tp_plan model on the accelerator it finds
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "tools.multi_gpu_check", "--tp", "--device", "cpu", "--tiny", "--new-tokens", "6",
               "--prompt-lengths", "20,40,5", "--workdir", str(tmp_path), "--json", str(out)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["failures"] == []
    ranks = result["ranks"]
    for arch, config_class in (("deepseek_v2", DeepseekV2Config), ("deepseek_v3", DeepseekV3Config)):
        shards = plan_shards_attention_heads(config_class)
        rows = [rank[arch] for rank in ranks]
        assert [row["rank"] for row in rows] == [0, 1]
        total = rows[0]["total_heads"]
        expected = total // 2 if shards else total
        for row in rows:
            assert row["plan_shards_attention"] is shards
            assert row["heads"] == {"q_proj": expected, "kv_b_proj": expected, "absorbed_w_uk": expected,
                                    "decode_api_h_q": [expected]}
            assert row["tp_tokens"] == row["single_tokens"] == rows[0]["tp_tokens"]
            assert row["calls"]["metadata"]["cpu"] * 2 == row["calls"]["api"]["cpu"]  # once per step, 2 layers


def test_bench_plumbing_on_cpu(tmp_path):
    """--bench's rows (one device, split, stock sdpa split) on the tiny preset; the numbers mean nothing here."""
    out = tmp_path / "bench.json"
    code = multi_gpu_check.main(["--bench", "--devices", "cpu,cpu", "--bench-preset", "smoke", "--bench-layers", "2",
                                 "--bench-context", "32", "--bench-batch", "2", "--bench-new-tokens", "3",
                                 "--stock-new-tokens", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert code == 0, result["failures"]
    assert [row["label"] for row in result["rows"]] == ["flash_mla 1 device", "flash_mla 2 devices", "sdpa 2 devices"]
    for row in result["rows"]:
        assert row["status"] == "ok" and row["decode_tokens_per_s"] > 0 and row["kv_cache_bytes"] is not None
    assert result["calls"]["metadata"] == {"cpu": 2} and result["calls"]["api"] == {"cpu": 4}
