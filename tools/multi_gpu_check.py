"""flash_mla on several devices: device_map (layers spread over devices) and tp_plan (tensor parallel).

Three modes, each prints a report and exits 1 when a hard check fails:

device_map (default): a small random DeepSeek-V3-architecture checkpoint (hf_flashmla.checkpoint, MoE layers
  included) is loaded three times: flash_mla with an explicit device_map that puts the embedding and the first
  half of the layers on the first device and the rest (with norm and lm_head) on the second; flash_mla on one
  device; eager on one device. A left-padded batch generates greedily across page boundaries. Hard checks:
  the split run's tokens equal the one-device flash_mla run's; every layer's latent pool lives on that layer's
  device; each device built its schedule (get_mla_metadata) once per decode step, not once per layer; on sm90
  devices the compiled kernel ran on every device. The eager agreement is reported (bf16 rounding makes long
  greedy runs drift; issue 4's equivalence tests cover it).

--tp (under torchrun): every rank loads the checkpoint with tp_plan="auto" (NCCL on GPUs, gloo on CPUs).
  DeepSeek-V2's plan shards the attention heads (q_proj/q_b_proj and kv_b_proj colwise, o_proj rowwise): each
  rank runs heads / world_size query heads against its own full copy of the shared latent cache. DeepSeek-V3's
  plan does the same from transformers 5.25 on; up to 5.24 it shards only the MLP / experts, and attention and
  its cache are replicated. Each model follows the installed release's plan. Hard checks: every rank's
  tokens are identical; the local head counts (query projection, kv_b_proj rows, absorbed W_UK, and the h_q
  the decode API saw) equal the plan's share; in float32 the tokens equal the single-process run's; on sm90
  the kernel ran. In bf16 the agreement with the single-process run is reported (sharded matmuls and the
  all-reduce change rounding).

--bench: decode tokens/s of a random model of a benchmarks/generate_models.py preset (default deepseek-v3-dense:
  DeepSeek-V3's attention with a dense MLP 4096, vocab 4096, bf16; --bench-layers layers) at --bench-context x
  --bench-batch, on one GPU and with its layers split over two GPUs (accelerate's dispatch_model, what device_map
  does), plus stock sdpa split over the same GPUs unless --no-stock. One row per run; OOM is a result.

Usage (GPU machine, repo root; NVLink multicast stays off: the script sets NCCL_NVLS_ENABLE=0 and
TORCH_SYMM_MEM_DISABLE_MULTICAST=1 for itself and its torchrun workers):
  python -m tools.multi_gpu_check --devices cuda:0,cuda:1
  torchrun --nproc-per-node 2 -m tools.multi_gpu_check --tp
  python -m tools.multi_gpu_check --bench --devices cuda:0,cuda:1 --json multi_gpu_bench.json
  python -m tools.multi_gpu_check --devices cpu,cuda:0 --placement hooks        # CPU + one GPU, layers on both
  python -m tools.multi_gpu_check --devices cpu,cpu --dtype float32              # CPU plumbing check
  torchrun --nproc-per-node 2 -m tools.multi_gpu_check --tp --device cpu        # gloo, float32
"""
from __future__ import annotations

import os

# The device machine requires NVLink multicast off; set before torch.distributed / NCCL read them.
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402

import torch  # noqa: E402

import hf_flashmla  # noqa: E402
from hf_flashmla import _ops, interface  # noqa: E402
from hf_flashmla.cli import runtime as rt  # noqa: E402

DEFAULT_WORKDIR = os.path.join(tempfile.gettempdir(), "hf_flashmla_multi_gpu_check")
LATENT_DIM = 512 + 64


def log(message: str):
    print(message, flush=True)


class Failures(list):
    def check(self, ok: bool, message: str):
        log(f"  [{'ok' if ok else 'FAIL'}] {message}")
        if not ok:
            self.append(message)


# ------------------------------------------------------------------------------------------ call counting
class DeviceCalls(contextlib.AbstractContextManager):
    """Counts, per device, the schedule builds (get_mla_metadata), the decode API calls with the h_q they
    saw (flash_mla_with_kvcache), and the compiled kernel's launches (hf_flashmla._ops.mla_decode).
    The integration calls these through their modules, so wrapping the module attributes sees every call."""

    def __init__(self):
        self.metadata = Counter()
        self.api = Counter()
        self.kernel = Counter()
        self.heads = defaultdict(set)
        self._saved = []

    def _wrap(self, module, name, record):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            record(*args, **kwargs)
            return original(*args, **kwargs)

        self._saved.append((module, name, original))
        setattr(module, name, wrapper)

    def __enter__(self):
        def on_metadata(cache_seqlens=None, *args, **kwargs):
            if isinstance(cache_seqlens, torch.Tensor):
                self.metadata[str(cache_seqlens.device)] += 1

        def on_api(q, *args, **kwargs):
            self.api[str(q.device)] += 1
            self.heads[str(q.device)].add(int(q.shape[2]))

        def on_kernel(q, *args, **kwargs):
            self.kernel[str(q.device)] += 1

        self._wrap(interface, "get_mla_metadata", on_metadata)
        self._wrap(interface, "flash_mla_with_kvcache", on_api)
        self._wrap(_ops, "mla_decode", on_kernel)
        return self

    def __exit__(self, *exc):
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)
        self._saved.clear()
        return False

    def as_dict(self):
        return {"metadata": dict(self.metadata), "api": dict(self.api), "kernel": dict(self.kernel),
                "api_heads": {k: sorted(v) for k, v in self.heads.items()}}


def kernel_expected(device: torch.device) -> bool:
    return device.type == "cuda" and hf_flashmla.backend(device).name == "cuda_sm90"


# ------------------------------------------------------------------------------------------------- models
def checkpoint(workdir: str, architecture: str, dtype: torch.dtype, tiny: bool = False) -> str:
    """The random checkpoint: hf_flashmla.checkpoint's default small shape (4 layers, 16 heads, MoE), or its
    TINY shape (2 layers, 4 heads) for quick CPU runs. Both keep the kernel's 512 + 64 latent."""
    from hf_flashmla.checkpoint import TINY, build_checkpoint

    tag = str(dtype).replace("torch.", "") + ("_tiny" if tiny else "")
    path = os.path.join(workdir, f"{architecture}_{tag}")
    return build_checkpoint(path, architecture, dtype=dtype, log=log, **({"base": TINY} if tiny else {}))


def layer_split(num_layers: int, devices: list[str]) -> tuple[dict, list[str]]:
    """(device_map for from_pretrained, device of each layer): consecutive layers in equal shares, the
    embedding with the first device, norm and lm_head with the last."""
    share = -(-num_layers // len(devices))
    layer_devices = [devices[min(i // share, len(devices) - 1)] for i in range(num_layers)]
    device_map = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0]}
    device_map.update({f"model.layers.{i}": d for i, d in enumerate(layer_devices)})
    device_map.update({"model.norm": layer_devices[-1], "lm_head": layer_devices[-1]})
    return device_map, layer_devices


def place_with_hooks(model, device_map: dict):
    """What accelerate's dispatch_model does for a map of execution devices, with "cpu" meaning run on the
    CPU (dispatch_model reads it as offload to the first GPU): each module's weights on its device and an
    AlignDevicesHook that moves the module's inputs there."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    for name, device in device_map.items():
        module = model.get_submodule(name)
        module.to(device)
        add_hook_to_module(module, AlignDevicesHook(execution_device=device))
    return model


def padded_prompts(lengths: list[int], vocab_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, width - length:] = torch.randint(2, vocab_size, (length,), generator=generator)
        mask[row, width - length:] = 1
    return ids, mask


@torch.no_grad()
def greedy(model, ids, mask, new_tokens: int, cache=None):
    """-> (new tokens [b, new_tokens] on the CPU, first-step logits float32 on the CPU)."""
    device = model.get_input_embeddings().weight.device
    kwargs = dict(attention_mask=mask.to(device), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  do_sample=False, return_dict_in_generate=True, output_logits=True)
    if cache is not None:
        from hf_flashmla.transformers_integration import cache_kwarg
        kwargs[cache_kwarg()] = cache
    out = model.generate(ids.to(device), **kwargs)
    return out.sequences[:, ids.shape[1]:].cpu(), out.logits[0].float().cpu()


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> dict:
    same = reference == candidate
    prefix = []
    for row in same:
        wrong = (~row).nonzero()
        prefix.append(int(wrong[0]) if len(wrong) else int(row.numel()))
    return {"match_rate": float(same.float().mean()), "identical": bool(same.all()), "agree_prefix": prefix}


def relative_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    return float((candidate - reference).norm() / reference.norm().clamp_min(1e-30))


def release():
    """Frees what the caller has just dropped (run after `del model`)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -------------------------------------------------------------------------------------------- device_map
def run_device_map(args) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if len(devices) < 2:
        raise SystemExit("--devices: expected at least two devices, e.g. cuda:0,cuda:1")
    dtype = getattr(torch, args.dtype)
    path = args.checkpoint or checkpoint(args.workdir, args.arch, dtype, args.tiny)
    single = next((d for d in devices if d != "cpu"), "cpu")
    failures = Failures()

    log(f"[device_map] checkpoint {path}, dtype {args.dtype}, devices {devices}")
    num_layers = AutoConfig.from_pretrained(path).num_hidden_layers
    device_map, layer_devices = layer_split(num_layers, devices)
    log(f"[device_map] layers -> {layer_devices}")
    if args.placement == "hooks":
        # Layers run where the map says, the CPU included (accelerate's own hooks, placed one by one).
        split = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="flash_mla")
        split = place_with_hooks(split, device_map)
    else:
        if single != "cpu" and "cpu" in layer_devices:
            # from_pretrained (accelerate's dispatch_model) reads "cpu" next to a GPU as CPU offload: those
            # layers' weights stay on the CPU and the layers run on the first GPU, so their pools are there.
            layer_devices = [single if d == "cpu" else d for d in layer_devices]
            log(f"[device_map] 'cpu' layers are offloaded by accelerate and run on {single}: expected pools "
                f"{layer_devices}")
        split = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="flash_mla",
                                                     device_map=device_map)
    ids, mask = padded_prompts(args.prompt_lengths, split.config.vocab_size)
    actual = [str(split.model.layers[i].self_attn.kv_b_proj.weight.device) for i in range(num_layers)]
    log(f"[device_map] kv_b_proj weights on {actual}")

    cache = hf_flashmla.LatentPagedCache(split.config)
    with DeviceCalls() as calls:
        split_tokens, split_logits = greedy(split, ids, mask, args.new_tokens, cache)
    pools = [str(cache.pool(i).device) for i in range(num_layers)]
    per_token_layer = cache.pool(0).shape[-1] * cache.pool(0).element_size()
    kv = {"pool_bytes": cache.nbytes(), "used_bytes": cache.used_bytes(), "bytes_per_token_per_layer": per_token_layer,
          "pool_pages_per_layer": cache.pool_pages, "sequence_lengths": cache.sequence_lengths}
    log(f"[device_map] pool devices {pools}")
    log(f"[device_map] KV cache: {kv['pool_bytes']} B allocated, {kv['used_bytes']} B used, "
        f"{per_token_layer} B per token per layer, lengths {kv['sequence_lengths']}")
    log(f"[device_map] calls {calls.as_dict()}")
    del split
    release()

    one = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="flash_mla", device_map=single)
    single_tokens, single_logits = greedy(one, ids, mask, args.new_tokens)
    one.set_attn_implementation("eager")
    eager_tokens, eager_logits = greedy(one, ids, mask, args.new_tokens)
    del one
    release()

    vs_single = agreement(single_tokens, split_tokens)
    vs_eager = agreement(eager_tokens, single_tokens)
    log(f"[device_map] split tokens    {split_tokens.tolist()}")
    log(f"[device_map] 1-device tokens {single_tokens.tolist()}")
    log(f"[device_map] eager tokens    {eager_tokens.tolist()}")
    log("[device_map] checks:")
    split_error = relative_error(single_logits, split_logits)
    if len({torch.device(d).type for d in layer_devices}) == 1:
        failures.check(vs_single["identical"], f"split == one-device flash_mla tokens ({vs_single})")
    else:  # CPU and GPU layers round bf16 differently: tokens may drift, logits must stay close
        log(f"  split vs one device tokens (reported: CPU and GPU layers round differently): {vs_single}")
        failures.check(split_error < 5e-2, f"split vs one device first-step logits rel err {split_error:.2e} < 5e-2")
    log(f"  first-step logits: split vs one device rel err {split_error:.2e}; "
        f"flash_mla vs eager rel err {relative_error(eager_logits, single_logits):.2e}")
    log(f"  flash_mla vs eager on one device (reported): {vs_eager}")
    failures.check(pools == layer_devices, f"layer pools on their layers' devices: {pools}")
    failures.check(per_token_layer == LATENT_DIM * torch.empty((), dtype=dtype).element_size(),
                   f"{per_token_layer} B per token per layer = 576 x {dtype}")
    paged_steps = {}
    for device in sorted(set(layer_devices)):
        layers_here = layer_devices.count(device)
        steps = calls.api[device] // max(layers_here, 1)
        paged_steps[device] = steps
        failures.check(calls.api[device] == steps * layers_here and steps > 0 and calls.metadata[device] == steps,
                       f"{device}: {calls.metadata[device]} schedules for {steps} paged steps x {layers_here} layers "
                       f"({calls.api[device]} decode calls)")
        if kernel_expected(torch.device(device)):
            failures.check(calls.kernel[device] == calls.api[device],
                           f"{device}: compiled kernel ran {calls.kernel[device]} times")
        else:
            log(f"  {device}: {hf_flashmla.backend(torch.device(device)).name} path "
                f"({calls.kernel[device]} kernel launches)")
    return {"mode": "device_map", "devices": devices, "layer_devices": layer_devices, "pool_devices": pools,
            "kv_cache": kv, "calls": calls.as_dict(), "paged_steps": paged_steps,
            "split_vs_single": vs_single, "single_vs_eager": vs_eager,
            "split_tokens": split_tokens.tolist(), "single_tokens": single_tokens.tolist(),
            "eager_tokens": eager_tokens.tolist(), "failures": list(failures)}


# ------------------------------------------------------------------------------------------------------ tp
def local_heads(model) -> dict:
    """This rank's attention heads of layer 0 as each piece sees them (DTensor parameters: local shard)."""
    attention = model.model.layers[0].self_attn
    q_proj = attention.q_proj if attention.q_lora_rank is None else attention.q_b_proj

    def rows(linear):
        weight = linear.weight
        return int((weight.to_local() if hasattr(weight, "to_local") else weight).shape[0])

    heads = {"q_proj": rows(q_proj) // attention.qk_head_dim,
             "kv_b_proj": rows(attention.kv_b_proj) // (attention.qk_nope_head_dim + attention.v_head_dim)}
    absorbed = getattr(attention, "_hf_flashmla_absorbed", None)
    if absorbed is not None:
        heads["absorbed_w_uk"] = int(absorbed.w_uk.shape[0])
    return heads


def plan_shards_attention(model) -> bool:
    plan = getattr(model.config, "base_model_tp_plan", None) or {}
    return any("self_attn.kv_b_proj" in key for key in plan)


def run_tp(args) -> dict | None:
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    if "RANK" not in os.environ:
        raise SystemExit("--tp runs under torchrun: torchrun --nproc-per-node 2 -m tools.multi_gpu_check --tp")
    rank, world, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # world_size processes share the cores
        dist.init_process_group("gloo")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if use_cuda else torch.float32)
    architectures = [a.strip() for a in args.archs.split(",") if a.strip()]
    paths = {}
    for arch in architectures:
        if rank == 0:
            paths[arch] = checkpoint(args.workdir, arch, dtype, args.tiny)
        dist.barrier()
        paths[arch] = checkpoint(args.workdir, arch, dtype, args.tiny) if rank else paths[arch]

    results = {}
    for arch in architectures:
        path = paths[arch]
        tp_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="flash_mla",
                                                        tp_plan="auto")
        ids, mask = padded_prompts(args.prompt_lengths, tp_model.config.vocab_size)
        with DeviceCalls() as calls:
            tp_tokens, tp_logits = greedy(tp_model, ids, mask, args.new_tokens)
        total_heads = tp_model.config.num_attention_heads
        sharded = plan_shards_attention(tp_model)
        expected = total_heads // world if sharded else total_heads
        heads = local_heads(tp_model)
        heads["decode_api_h_q"] = sorted(set().union(*calls.heads.values())) if calls.heads else []
        del tp_model
        release()

        one = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="flash_mla",
                                                   device_map=str(device))
        single_tokens, single_logits = greedy(one, ids, mask, args.new_tokens)
        single_heads = local_heads(one)  # proves the reference is unsharded (all heads in this process)
        del one
        release()
        results[arch] = {"rank": rank, "device": str(device), "tp_tokens": tp_tokens.tolist(),
                         "single_tokens": single_tokens.tolist(), "heads": heads, "single_heads": single_heads,
                         "expected_heads": expected,
                         "total_heads": total_heads, "plan_shards_attention": sharded, "calls": calls.as_dict(),
                         "logits_rel_err": relative_error(single_logits, tp_logits),
                         "vs_single": agreement(single_tokens, tp_tokens)}

    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    dist.barrier()
    dist.destroy_process_group()
    if rank != 0:
        return None

    failures = Failures()
    strict = dtype == torch.float32
    for arch in architectures:
        rows = [g[arch] for g in gathered]
        log(f"[tp] {arch}: world {world}, plan shards attention heads: {rows[0]['plan_shards_attention']}, "
            f"{rows[0]['total_heads']} heads in all")
        for row in rows:
            log(f"  rank {row['rank']} ({row['device']}): local heads {row['heads']}, expected "
                f"{row['expected_heads']}; calls {row['calls']}; vs single process {row['vs_single']}, first-step "
                f"logits rel err {row['logits_rel_err']:.2e}")
        failures.check(all(r["tp_tokens"] == rows[0]["tp_tokens"] for r in rows), f"{arch}: all ranks' tokens agree")
        for row in rows:
            counts = [row["heads"]["q_proj"], row["heads"]["kv_b_proj"], row["heads"].get("absorbed_w_uk")]
            failures.check(row["single_heads"]["q_proj"] == row["total_heads"],
                           f"{arch} rank {row['rank']}: the single-process reference runs all "
                           f"{row['single_heads']['q_proj']} heads")
            failures.check(all(c == row["expected_heads"] for c in counts)
                           and row["heads"]["decode_api_h_q"] == [row["expected_heads"]],
                           f"{arch} rank {row['rank']}: every piece runs {row['expected_heads']} heads")
            if strict:
                failures.check(row["vs_single"]["identical"], f"{arch} rank {row['rank']}: tokens == single process")
            if kernel_expected(torch.device(row["device"])):
                failures.check(row["calls"]["kernel"].get(row["device"], 0) > 0,
                               f"{arch} rank {row['rank']}: compiled kernel ran on {row['device']}")
        log(f"  tokens (rank 0) {rows[0]['tp_tokens']}")
    return {"mode": "tp", "world_size": world, "dtype": str(dtype), "ranks": gathered, "failures": list(failures)}


# --------------------------------------------------------------------------------------------------- bench
class AllDeviceClock:
    """A logits processor that stamps the time after every forward pass, every used device synchronised."""

    def __init__(self, devices):
        self.devices = devices
        self.stamps = []

    def sync(self):
        for device in self.devices:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

    def begin(self):
        self.sync()
        self.start = time.perf_counter()
        self.stamps = []

    def __call__(self, input_ids, scores):
        self.sync()
        self.stamps.append(time.perf_counter())
        return scores


def bench_row(model, label, attn, devices, batch, context, new_tokens) -> dict:
    from transformers import LogitsProcessorList

    row = {"label": label, "attn": attn, "devices": [str(d) for d in devices], "batch": batch, "context": context,
           "new_tokens": new_tokens}
    model.set_attn_implementation(attn)
    first = model.get_input_embeddings().weight.device
    ids = torch.randint(2, model.config.vocab_size, (batch, context), generator=torch.Generator().manual_seed(0))
    cache = hf_flashmla.LatentPagedCache(model.config) if attn == "flash_mla" else None
    clock = AllDeviceClock(devices)
    cuda_devices = [d for d in devices if d.type == "cuda"]
    for device in cuda_devices:
        torch.cuda.reset_peak_memory_stats(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  logits_processor=LogitsProcessorList([clock]), return_dict_in_generate=True)
    if cache is not None:
        kwargs[rt.cache_kwarg(model)] = cache
    try:
        with torch.no_grad():
            clock.begin()
            out = model.generate(ids.to(first), attention_mask=torch.ones_like(ids).to(first), **kwargs)
    except Exception as error:  # OOM is a result row
        if not rt.is_oom(error):
            raise
        row["status"] = "OOM"
        del error
        release()
        return row
    steps = len(clock.stamps) - 1
    decode_s = clock.stamps[-1] - clock.stamps[0]
    row.update(status="ok", ttft_s=clock.stamps[0] - clock.start, decode_ms_per_step=decode_s * 1e3 / steps,
               decode_tokens_per_s=batch * steps / decode_s,
               peak_bytes={str(d): torch.cuda.max_memory_allocated(d) for d in cuda_devices})
    kv, how = rt.kv_cache_bytes(cache if cache is not None else rt.output_cache(out))
    row.update(kv_cache_bytes=kv, kv_cache_counted_by=how)
    del out, cache
    release()
    return row


def run_bench(args) -> dict:
    from accelerate import dispatch_model

    from benchmarks import generate_models

    devices = [torch.device(d.strip()) for d in args.devices.split(",") if d.strip()]
    if len(devices) < 2:
        raise SystemExit("--bench: expected two or more devices in --devices, e.g. cuda:0,cuda:1")
    dtype = getattr(torch, args.dtype)
    config = generate_models.make_config(args.bench_preset, layers=args.bench_layers)
    log(f"[bench] {args.bench_preset} model {generate_models.describe(config)}, {args.dtype}, built on {devices[0]}")
    model = generate_models.build_model(config, dtype=dtype, device=devices[0], attn_implementation="flash_mla")
    batch, context = args.bench_batch, args.bench_context
    rows = []

    def add(row):
        rows.append(row)
        if row["status"] == "ok":
            peaks = ", ".join(f"{d} {b / 2**30:.1f} GiB" for d, b in row["peak_bytes"].items())
            log(f"[bench] {row['label']:<22} {context} x {batch}: {row['decode_tokens_per_s']:9.1f} tok/s "
                f"({row['decode_ms_per_step']:.2f} ms/step), TTFT {row['ttft_s']:.2f} s, peak {peaks}, "
                f"KV {row['kv_cache_bytes'] / 2**30:.2f} GiB")
        else:
            log(f"[bench] {row['label']:<22} {context} x {batch}: {row['status']}")

    # Warm-up (kernel loads, cuBLAS handles) on a short prompt, then the one-GPU row.
    bench_row(model, "warm-up", "flash_mla", devices[:1], 1, 128, 4)
    unit = "GPU" if devices[0].type == "cuda" else "device"
    add(bench_row(model, f"flash_mla 1 {unit}", "flash_mla", devices[:1], batch, context, args.bench_new_tokens))
    device_map, layer_devices = layer_split(config.num_hidden_layers, [str(d) for d in devices])
    model = dispatch_model(model, device_map=device_map)
    log(f"[bench] layers -> {layer_devices}")
    bench_row(model, "warm-up", "flash_mla", devices, 1, 128, 4)
    with DeviceCalls() as calls:
        add(bench_row(model, f"flash_mla {len(devices)} {unit}s", "flash_mla", devices, batch, context,
                      args.bench_new_tokens))
    log(f"[bench] calls on the split run: {calls.as_dict()}")
    if not args.no_stock:
        add(bench_row(model, f"sdpa {len(devices)} {unit}s", "sdpa", devices, batch, context, args.stock_new_tokens))
    failures = Failures()
    for device in devices:
        if kernel_expected(device):
            failures.check(calls.kernel[str(device)] > 0, f"{device}: compiled kernel ran in the split run")
    log("[bench] | run | context x batch | decode tok/s | ms/step | TTFT s | peak GiB per GPU | KV GiB |")
    for row in rows:
        if row["status"] != "ok":
            log(f"[bench] | {row['label']} | {context} x {batch} | {row['status']} | | | | |")
            continue
        peaks = " / ".join(f"{b / 2**30:.1f}" for b in row["peak_bytes"].values())
        log(f"[bench] | {row['label']} | {context} x {batch} | {row['decode_tokens_per_s']:.1f} | "
            f"{row['decode_ms_per_step']:.2f} | {row['ttft_s']:.2f} | {peaks} | {row['kv_cache_bytes'] / 2**30:.2f} |")
    names = [torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu" for d in devices]
    return {"mode": "bench", "model": generate_models.describe(config), "dtype": args.dtype,
            "devices": [str(d) for d in devices],
            "device_names": names, "rows": rows, "calls": calls.as_dict(), "failures": list(failures)}


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tp", action="store_true", help="tensor-parallel check (run under torchrun)")
    parser.add_argument("--bench", action="store_true", help="2-GPU decode tokens/s row")
    parser.add_argument("--devices", default="cuda:0,cuda:1", help="device_map / bench devices, comma-separated")
    parser.add_argument("--device", default="cuda", help="--tp: 'cuda' (NCCL, rank i on cuda:i) or 'cpu' (gloo)")
    parser.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA) or float32 (default on CPU)")
    parser.add_argument("--placement", choices=("from_pretrained", "hooks"), default="from_pretrained",
                        help="device_map mode: from_pretrained(device_map=dict), or accelerate hooks placed per "
                             "module so that 'cpu' layers really run on the CPU (e.g. --devices cpu,cuda:0)")
    parser.add_argument("--arch", default="deepseek_v3", help="device_map: deepseek_v3 or deepseek_v2")
    parser.add_argument("--archs", default="deepseek_v2,deepseek_v3", help="--tp: architectures to check")
    parser.add_argument("--checkpoint", default=None, help="device_map: a local checkpoint instead of the random one")
    parser.add_argument("--tiny", action="store_true", help="the tiny random shape (2 layers, 4 heads): CPU tests")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where the random checkpoints are built")
    parser.add_argument("--prompt-lengths", default="40,70,25", help="left-padded batch (tokens per prompt)")
    parser.add_argument("--new-tokens", type=int, default=80)
    parser.add_argument("--bench-preset", default="deepseek-v3-dense",
                        help="--bench: a benchmarks/generate_models.py preset (smoke: CPU plumbing)")
    parser.add_argument("--bench-layers", type=int, default=4)
    parser.add_argument("--bench-context", type=int, default=16384)
    parser.add_argument("--bench-batch", type=int, default=8)
    parser.add_argument("--bench-new-tokens", type=int, default=64)
    parser.add_argument("--stock-new-tokens", type=int, default=16)
    parser.add_argument("--no-stock", action="store_true", help="--bench: skip the sdpa row")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    args.prompt_lengths = [int(v) for v in args.prompt_lengths.split(",") if v]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tp:
        result = run_tp(args)
    else:
        if args.dtype is None:
            args.dtype = "float32" if all(d.strip() == "cpu" for d in args.devices.split(",")) else "bfloat16"
        result = run_bench(args) if args.bench else run_device_map(args)
    if result is None:  # a tp rank other than 0
        return 0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        log(f"[{result['mode']}] wrote {args.json}")
    if result["failures"]:
        log(f"[{result['mode']}] FAILED: {len(result['failures'])} check(s): {result['failures']}")
        return 1
    log(f"[{result['mode']}] all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
