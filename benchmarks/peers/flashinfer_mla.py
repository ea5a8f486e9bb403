"""FlashInfer's MLA paged decode kernel, sm90 "fa3" backend (flashinfer.mla.BatchMLAPagedAttentionWrapper).

The flashinfer-python wheel (62 MB, 426 MB unpacked) and its dependencies do not fit the GPU machine's 64 MiB carry
limit, so benchmarks/peers/make_flashinfer_bundle.sh makes a trimmed bundle in <repo>/.fi (about 8 MB; carry [".fi"]):
flashinfer-<ver>-mla-sm90.tar.xz (the Python packages that `flashinfer.mla` imports and the sources and header trees
the sm90 MLA JIT module compiles from) and the apache-tvm-ffi cp312 wheel (the one requirement missing on the GPU
machine). $FLASHINFER_BUNDLE names another bundle folder. It is unpacked once into $FLASHINFER_PEER_DIR
(/tmp/flashinfer_peer); `flashinfer` is registered as a bare package whose __init__ is not run (it eagerly imports
every kernel family and optional deps: cutlass-dsl, cudnn-frontend, cuda-tile, nccl4py), then `flashinfer.mla` is
imported. The wrapper's first plan() JIT-compiles the module (3 .cu files, sm_90a, nvcc + ninja; 13 s on 2 cores with
nvcc 13.0) into $FLASHINFER_PEER_DIR/.cache/flashinfer; nothing is downloaded (FLASHINFER_NO_DOWNLOAD=1, and the fa3
path needs no cubins). Prebuild it with `python -m benchmarks.peers.flashinfer_mla --build`. Never run it with
FLASHINFER_JIT_DEBUG=1 (or FLASHINFER_JIT_VERBOSE=1 without FLASHINFER_JIT_DEBUG=0, which this module sets): that
builds -G -O0.

Call: the wrapper is planned once per config outside the timed call (like get_mla_metadata): CSR metadata with
qo_indptr = s_q per request, kv_indptr / kv_indices = each request's pages from the block table, kv_len_arr =
cache_seqlens, causal=True, sm_scale = softmax_scale, lse_mode="basee". FlashInfer's causal mask aligns the last query
row with the last key (key k visible to query i iff k <= kv_len - s_q + i), as FlashMLA's does. The query is passed
packed ([b * s_q, h_q, 576]) and the cache packed ([num_blocks, 64, 576], the k_cache itself, no copy): the kernel
takes the 512 + 64 split views with their strides (page stride 64 * 576, token stride 576), so it reads the same
bytes as FlashMLA. out is [b * s_q, h_q, 512]; lse is [b * s_q, h_q] in natural-log units (return_lse_base_on_e;
the kernel's default is log2), returned as FlashMLA's [b, h_q, s_q].
Supports: bf16 / fp16, head_dim_ckv 512 + head_dim_kpe 64, h_kv 1, any page size, any s_q (causal), q heads such that
FlashInfer's planner accepts the workload (it rejects some causal head counts not dividing its 64/128-row tile).
Variants: "flashinfer" (wrapper.run, the public call) and "flashinfer/direct" (the compiled module's run with the
same planned arguments, without the wrapper's per-call Python checks); the bench reports the best.
"""
from __future__ import annotations

import glob
import importlib.machinery
import os
import sys
import tarfile
import time
import types
import zipfile

import torch

from benchmarks.peers.loading import REPO_ROOT, import_package, unpack_once

NAME = "flashinfer"
BACKEND = "fa3"
WORKSPACE_BYTES = 128 * 1024 * 1024
NO_BUNDLE = "not run: no FlashInfer bundle in .fi/ (benchmarks/peers/flashinfer_mla.py says how to make it)"
_PEER_DIR = os.environ.get("FLASHINFER_PEER_DIR", "/tmp/flashinfer_peer")

_mla = None  # the flashinfer.mla module
_load_error = None
_info = ""
_float_workspace = {}
_planned = {}  # one planned wrapper per input set (the bench's input copies share lengths and block table)


def bundle_dir():
    return os.environ.get("FLASHINFER_BUNDLE") or os.path.join(REPO_ROOT, ".fi")


def _find_bundle():
    folder = bundle_dir()
    tars = sorted(glob.glob(os.path.join(folder, "flashinfer-*-mla-sm90.tar.*")))
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = sorted(glob.glob(os.path.join(folder, f"apache_tvm_ffi-*-{tag}-*.whl")))
    return (tars[-1] if tars else None), (wheels[-1] if wheels else None)


def _set_env():
    """JIT settings; each only where the caller has not set it."""
    defaults = {
        "FLASHINFER_WORKSPACE_BASE": _PEER_DIR,     # JIT cache: <base>/.cache/flashinfer/<ver>/90a/cached_ops
        "FLASHINFER_CUDA_ARCH_LIST": "9.0a",        # sm_90a only (the fa3 module adds its own -gencode anyway)
        "FLASHINFER_NO_DOWNLOAD": "1",              # never fetch cubins / artifacts (no network there)
        "FLASHINFER_CUBINS_REPOSITORY": "file:///nonexistent-flashinfer-cubins",
        "FLASHINFER_DISABLE_VERSION_CHECK": "1",
        "FLASHINFER_LOGLEVEL": "0",                 # API logging off (the decorator is then a no-op)
        "FLASHINFER_JIT_DEBUG": "0",                # -O3; unset, FLASHINFER_JIT_VERBOSE=1 would mean -G -O0
        "TVM_FFI_CACHE_DIR": os.path.join(_PEER_DIR, "tvm-ffi"),  # only used if torch lacks the DLPack C API
        "MAX_JOBS": str(min(16, os.cpu_count() or 1)),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _unpack(tar_path, wheel):
    """Unpacks the bundle (and the tvm_ffi wheel, a zip of the site-packages layout) once into
    _PEER_DIR/<bundle name>-<size>."""
    def fill(folder):
        with tarfile.open(tar_path) as archive:
            try:
                archive.extractall(folder, filter="data")
            except TypeError:  # Python without extraction filters
                archive.extractall(folder)
        if wheel:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(os.path.join(folder, "site"))
    name = f"{os.path.basename(tar_path).split('.tar')[0]}-{os.stat(tar_path).st_size}"
    return unpack_once(os.path.join(_PEER_DIR, name), fill)


def _load():
    global _mla, _load_error, _info
    if _mla is not None or _load_error is not None:
        return _mla
    try:
        tar_path, wheel = _find_bundle()
        if tar_path is None:
            _load_error = NO_BUNDLE
            return None
        _set_env()
        root = _unpack(tar_path, wheel)
        site = os.path.join(root, "site")
        try:
            import tvm_ffi  # noqa: F401  (an installed one wins)
        except ImportError:
            if not os.path.isdir(site):
                _load_error = (f"apache-tvm-ffi is not installed and the bundle has no cp"
                               f"{sys.version_info.major}{sys.version_info.minor} wheel of it")
                return None
            tvm_ffi = import_package("tvm_ffi", site)
        package_dir = os.path.join(root, "flashinfer")
        existing = sys.modules.get("flashinfer")
        if existing is None or list(getattr(existing, "__path__", [])) != [package_dir]:
            # A bare package: its submodules import from its folder, its __init__ (every kernel family) is not run.
            package = types.ModuleType("flashinfer")
            package.__path__ = [package_dir]
            package.__file__ = os.path.join(package_dir, "__init__.py")
            package.__package__ = "flashinfer"
            package.__spec__ = importlib.machinery.ModuleSpec("flashinfer", None, is_package=True)
            package.__spec__.submodule_search_locations = package.__path__
            sys.modules["flashinfer"] = package
        import flashinfer.mla as mla
        from flashinfer.version import __version__
        mla.BatchMLAPagedAttentionWrapper  # noqa: B018  (fails here if the export is missing)
        if not hasattr(sys.modules["flashinfer"], "__version__"):
            sys.modules["flashinfer"].__version__ = __version__
        _mla = mla
        _info = f"flashinfer {__version__} {BACKEND} (tvm_ffi {tvm_ffi.__version__}, JIT cache {_jit_dir()})"
    except Exception as error:  # reported as the peer's error row
        _load_error = f"loading FlashInfer from {bundle_dir()} failed: {error!r}"[:300]
    return _mla


def _jit_dir():
    try:
        from flashinfer.jit import env as jit_env
        return str(jit_env.FLASHINFER_JIT_DIR)
    except Exception:
        return "?"


def available():
    if _find_bundle()[0] is None:
        return False, NO_BUNDLE
    if not torch.cuda.is_available():
        return False, "not run: needs CUDA"
    if _load() is None:
        return False, _load_error
    if torch.cuda.get_device_capability()[0] != 9:
        return False, f"the fa3 backend needs sm90, not sm{''.join(map(str, torch.cuda.get_device_capability()))}"
    return True, _info


def supports(inputs):
    q, k_cache = inputs["q"], inputs["k_cache"]
    if q.device.type != "cuda":
        return False, "needs CUDA"
    if q.dtype not in (torch.bfloat16, torch.float16) or k_cache.dtype != q.dtype:
        return False, f"dtype {q.dtype} / {k_cache.dtype} not supported"
    if q.shape[-1] != 576 or inputs["dv"] != 512 or k_cache.shape[2] != 1:
        return False, "needs head_dim 576 = 512 + 64 and one KV head"
    return True, ""


def _workspace(device):
    key = str(device)
    if key not in _float_workspace:
        _float_workspace[key] = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    return _float_workspace[key]


def _csr(inputs):
    """FlashInfer's CSR page metadata (int32): qo_indptr, kv_indptr, kv_indices (page ids), kv_len_arr."""
    block_table, page = inputs["block_table"], inputs["k_cache"].shape[1]
    lengths, s_q = inputs["lengths"], inputs["s_q"]
    device = block_table.device
    pages = [-(-n // page) for n in lengths]
    qo_indptr = torch.arange(len(lengths) + 1, dtype=torch.int32, device=device) * s_q
    kv_indptr = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    kv_indptr[1:] = torch.cumsum(torch.tensor(pages, dtype=torch.int64), 0).to(torch.int32)
    pieces = [block_table[i, :n] for i, n in enumerate(pages) if n]
    kv_indices = (torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int32, device=device)).to(torch.int32)
    kv_len_arr = inputs["cache_seqlens"].to(torch.int32)
    return qo_indptr, kv_indptr.to(device), kv_indices.contiguous(), kv_len_arr


def _plan(inputs):
    q, k_cache = inputs["q"], inputs["k_cache"]
    key = (inputs["block_table"].data_ptr(), tuple(inputs["lengths"]), tuple(q.shape), q.dtype, k_cache.dtype,
           k_cache.shape[1], float(inputs["softmax_scale"]), bool(inputs.get("causal", True)), str(q.device))
    if key in _planned:
        return _planned[key]
    _planned.clear()
    mla = _load()
    wrapper = mla.BatchMLAPagedAttentionWrapper(_workspace(q.device), backend=BACKEND)
    qo_indptr, kv_indptr, kv_indices, kv_len_arr = _csr(inputs)
    wrapper.plan(metadata=mla.MLAPlanMetadata.csr(qo_indptr, kv_indptr, kv_indices, kv_len_arr),
                 num_heads=q.shape[2], head_dim_ckv=inputs["dv"], head_dim_kpe=q.shape[-1] - inputs["dv"],
                 page_size=k_cache.shape[1], causal=bool(inputs.get("causal", True)),
                 sm_scale=float(inputs["softmax_scale"]), q_data_type=q.dtype, kv_data_type=k_cache.dtype,
                 query_layout="packed", kv_cache_layout="packed", lse_mode="basee")
    _planned[key] = wrapper
    return wrapper


def make(inputs):
    q, k_cache = inputs["q"], inputs["k_cache"]
    batch, s_q, h_q, d = q.shape
    dv = inputs["dv"]
    wrapper = _plan(inputs)
    query = q.view(batch * s_q, h_q, d)
    kv_cache = k_cache.view(k_cache.shape[0], k_cache.shape[1], d)  # h_kv = 1
    out = torch.empty(batch * s_q, h_q, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch * s_q, h_q, dtype=torch.float32, device=q.device)

    def run():
        wrapper.run(query=query, kv_cache=kv_cache, out=out, lse=lse, return_lse=True, return_lse_base_on_e=True)
        return out

    def result(run=run):
        run()
        return out.view(batch, s_q, h_q, dv), lse.view(batch, s_q, h_q).transpose(1, 2)

    variants = {"flashinfer": (run, result)}
    direct = _direct_run(wrapper, query, kv_cache, out, lse, dv)
    if direct is not None:
        variants["flashinfer/direct"] = (direct, lambda: result(direct))
    return variants


def _direct_run(wrapper, query, kv_cache, out, lse, dv):
    """The planned backend's compiled run with the arguments wrapper.run passes it (private attributes of
    flashinfer.mla._batch_mla._backends._fa_common; None where they differ from 0.7.2)."""
    try:
        from flashinfer.utils import MaskMode
        backend = wrapper._planned_backend
        module, plan_info = backend._cached_module, backend._plan_info
        args = (backend._float_workspace_buffer, backend._int_workspace_buffer, plan_info,
                query[..., :dv], query[..., dv:], kv_cache[..., :dv], kv_cache[..., dv:], backend._kv_indices_buf,
                out, lse, MaskMode.CAUSAL.value if backend._causal else MaskMode.NON_CAUSAL.value, query.shape[1],
                backend._page_size, backend._sm_scale, True, 1.0, 1.0, None)
        if backend._use_profiler:
            return None
    except Exception:
        return None

    def direct():
        module.run(*args)
        return out
    return direct


def prebuild(dtype=torch.bfloat16):
    """JIT-compiles (or finds cached) the fa3 MLA module for dtype, d 512 + 64; returns seconds taken."""
    if _load() is None:
        raise RuntimeError(_load_error)
    from flashinfer.mla._batch_mla._backends._fa_common import get_batch_mla_module
    t0 = time.perf_counter()
    get_batch_mla_module(BACKEND, dtype, dtype, dtype, torch.int32, 512, 64, False)
    return time.perf_counter() - t0


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="FlashInfer MLA peer: load check / JIT prebuild")
    parser.add_argument("--build", action="store_true", help="JIT-compile the fa3 MLA module (bf16) now")
    args = parser.parse_args()
    module = _load()
    print(f"bundle: {bundle_dir()}  peer dir: {_PEER_DIR}")
    if module is None:
        print(f"load failed: {_load_error}")
        sys.exit(1)
    print(f"loaded: {_info}")
    if args.build:
        print(f"fa3 MLA module ready in {prebuild():.1f} s", flush=True)
