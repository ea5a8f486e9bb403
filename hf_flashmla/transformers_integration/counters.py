"""How often each flash_mla attention path ran, per layer call.

The attention adds to these; tests, hf_flashmla.generation_check and the benchmarks read them to tell which
path a run took (e.g. that decode steps reached the compiled kernel, or that a prefill ran in blocks).
"""
from __future__ import annotations

PATHS = (
    "paged_kernel",       # decode over the pages on the compiled kernel
    "paged_triton",       # decode over the pages on the Triton kernel (GPUs other than Hopper, h_kv > 1, latents
                          # other than 512 + 64)
    "paged_reference",    # decode over the pages on the PyTorch reference (the CPU; GPUs where Triton does not run;
                          # HF_FLASHMLA_BACKEND=reference)
    "dense",              # prefill chunk: dense attention on K/V expanded from the latent
    "dense_other_cache",  # a cache that is not a LatentPagedCache (e.g. a user's DynamicCache): dense
    "prefill_blocks",     # blocks of a long prefill chunk run by prefill_slices
    "graph_steps",        # decode steps replayed as CUDA graphs (decode_graphs.py): each also adds the paths that
                          # its captured forward took (paged_kernel per layer, ...), as an eager step would
    "graph_paged_kernel",  # the paged_kernel calls among those: compiled-kernel launches inside graph replays
)


class PathCounters:
    """Call counts per path name (PATHS); reading an unknown name raises KeyError."""

    def __init__(self):
        self._counts = dict.fromkeys(PATHS, 0)

    def add(self, path: str, calls: int = 1) -> None:
        if path not in self._counts:
            raise KeyError(f"path: expected one of {PATHS}, got {path!r}")
        self._counts[path] += calls

    def __getitem__(self, path: str) -> int:
        return self._counts[path]

    def keys(self):
        return self._counts.keys()

    def snapshot(self) -> dict:
        """A copy of the counts; the difference of two snapshots says what ran in between."""
        return dict(self._counts)

    def restore(self, snapshot: dict) -> None:
        """Back to an earlier snapshot()."""
        self._counts.update(snapshot)

    def reset(self) -> None:
        for path in self._counts:
            self._counts[path] = 0

    def __repr__(self):
        return f"PathCounters({self._counts})"


counters = PathCounters()
