"""The schedule kernel gives schedule.py's PyTorch schedule bit for bit, checked on the CPU two ways:
- its per-thread arithmetic (csrc/mla_metadata_core.h) driven by a serial mirror of its chunk loop, for
  any thread count (tests/harness/mla_metadata_host.cpp);
- csrc/mla_metadata_kernel.cu itself, kernel and launcher, built for the host against an emulated
  runtime that runs each CUDA thread as an OS thread with real barriers and warp shuffles
  (tests/harness/mla_metadata_emulated.cpp, tests/harness/emulated_cuda/cuda_runtime.h).
Also compute_schedule's choice between the kernel and PyTorch. The harnesses need a host C++ compiler
(skipped without one); on the GPU, tests/test_schedule_gpu.py compares the real kernel."""
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from hf_flashmla import schedule
from hf_flashmla.schedule import PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES
from schedule_rules import one_part_per_sequence, pieces_per_sequence, snapped_bounds

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "harness" / "mla_metadata_host.cpp"
EMULATED = ROOT / "tests" / "harness" / "mla_metadata_emulated.cpp"
INT32_MAX = 2**31 - 1


def find_cxx():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build_binary(tmp_path_factory, folder, source, flags):
    cxx = find_cxx()
    if cxx is None:
        pytest.skip("no host C++ compiler")
    binary = tmp_path_factory.mktemp(folder) / source.stem
    build = subprocess.run([cxx, *flags, f"-I{ROOT / 'csrc'}", str(source), "-o", str(binary)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    return binary


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return build_binary(tmp_path_factory, "schedule_harness", HARNESS, ["-std=c++17", "-O2", "-Wall", "-Werror"])


@pytest.fixture(scope="module")
def emulated_kernel(tmp_path_factory):
    return build_binary(tmp_path_factory, "schedule_emulated", EMULATED,
                        ["-std=c++20", "-O2", "-pthread", "-Wall", "-Wno-unknown-pragmas", "-Werror",
                         f"-I{ROOT / 'tests' / 'harness' / 'emulated_cuda'}"])


def harness_stdin(cases, combine_pages=None) -> str:
    """cases: (num_threads, num_parts, page_size, overhead, lengths), as the harness binaries read them (with
    schedule.py's split cost, unless combine_pages is given, and fewer-pieces threshold at 64 rows)."""
    lines = [str(len(cases))]
    combine = schedule.split_cost_pages() if combine_pages is None else combine_pages
    min_pages = schedule.min_piece_pages_for()
    for num_threads, num_parts, page_size, overhead, lengths in cases:
        lines.append(f"{num_threads} {num_parts} {page_size} {overhead} {combine} {min_pages} {len(lengths)} "
                     + " ".join(map(str, lengths)))
    return "\n".join(lines) + "\n"


def run_harness(binary, cases, combine_pages=None):
    """cases, combine_pages: as harness_stdin's; yields (metadata, num_splits)."""
    result = subprocess.run([str(binary)], input=harness_stdin(cases, combine_pages), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    outputs = result.stdout.splitlines()
    assert len(outputs) == len(cases)
    for (_, num_parts, _, _, lengths), line in zip(cases, outputs):
        values = torch.tensor([int(v) for v in line.split()], dtype=torch.int32)
        split = num_parts * schedule.METADATA_WIDTH
        yield values[:split].view(num_parts, schedule.METADATA_WIDTH), values[split:]


def random_lengths(rng, batch):
    kind = rng.choice(["uniform", "short", "zeros", "mostly_zero", "page_edges", "skewed", "one_huge", "extreme",
                       "equal", "near_equal"])
    if kind == "equal":  # one part per sequence where b <= parts (schedule.py's rule)
        return [rng.choice([1, 64, 1024, 4096, 16384, rng.randint(0, 100_000)])] * batch
    if kind == "near_equal":
        base = rng.randint(0, 20_000)
        return [max(0, base + rng.randint(-200, 200)) for _ in range(batch)]
    if kind == "uniform":
        return [rng.randint(0, 100_000) for _ in range(batch)]
    if kind == "short":
        return [rng.randint(0, 200) for _ in range(batch)]
    if kind == "zeros":
        return [0] * batch
    if kind == "mostly_zero":
        return [rng.randint(1, 100_000) if rng.random() < 0.05 else 0 for _ in range(batch)]
    if kind == "page_edges":
        return [max(0, PAGE_SIZE * rng.randint(0, 1600) + rng.choice([-1, 0, 1])) for _ in range(batch)]
    if kind == "skewed":
        return [min(100_000, int(rng.paretovariate(0.7) * 40)) for _ in range(batch)]
    if kind == "one_huge":
        lengths = [rng.randint(0, 300) for _ in range(batch)]
        lengths[rng.randrange(batch)] = rng.randint(100_000, 2_000_000)
        return lengths
    # Values schedule.py clamps (negative) or must not overflow on (int32 max): 64-bit sums.
    return [rng.choice([-5, -INT32_MAX - 1, 0, 1, INT32_MAX, rng.randint(0, INT32_MAX)]) for _ in range(batch)]


def snapped_cases(num_threads):
    """Equal and near-equal lengths where whole sequences snap: the benchmark's compute-bound shapes, bounds on
    chunk edges (32 and 96 threads), many short sequences over several chunks."""
    cases = []
    for batch, num_parts, length in ((64, 33, 4096), (64, 33, 8192), (128, 66, 4096), (128, 33, 4096),
                                     (133, 132, 64), (2049, 132, 100), (3000, 66, 1000), (1100, 1024, 1)):
        cases.append((num_threads, num_parts, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [length] * batch))
        cases.append((num_threads, num_parts, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES,
                      [length + 64 * (i % 3) - 64 for i in range(batch)]))
    return [case for case in cases if snapped_bounds(case[4], case[1]) is not None]


def by_count_cases(num_threads):
    """Near-equal lengths of under two parts' share each, where the by-count bounds (part p from sequence
    floor(p b / P)) beat the nearest-end snapping: FlashMLA's sweep at base 1K (b = 128 on 66 parts, split cost 16),
    equal lengths at 1.5 sequences per part, and more sequences over several chunks (32 and 96 threads; 1500
    sequences); the last two are cases where the nearest-end bounds stay."""
    cases = []
    for batch, num_parts, base, step in ((128, 66, 1024, 2), (128, 66, 1100, 3), (125, 66, 1024, 5), (99, 66, 700, 0),
                                         (250, 132, 1024, 1), (382, 132, 2000, 1), (1500, 1000, 300, 0),
                                         (200, 132, 700, 1), (300, 132, 2000, 5)):
        cases.append((num_threads, num_parts, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES,
                      [base + step * i for i in range(batch)]))
    return cases


def by_count_taken(lengths, num_parts, combine_pages):
    bounds = snapped_bounds(lengths, num_parts, combine_pages)
    return bounds is not None and bounds[:-1] == [
        sum(-(-n // PAGE_SIZE) + SEQUENCE_OVERHEAD_PAGES for n in lengths[:p * len(lengths) // num_parts])
        for p in range(num_parts)]


def fewer_pieces_cases(rng, num_threads):
    """Small batches of a few hundred to a few thousand tokens, where schedule.py's fewer-pieces rule halves k
    (asserted for every case): equal and uneven lengths."""
    cases = []
    for batch, num_parts, length in ((1, 66, 4096), (1, 132, 8192), (2, 66, 4096), (4, 132, 2048), (1, 33, 2048),
                                     (3, 132, 3000), (2, 1500, 30000), (1, 66, 16384)):
        for lengths in ([length] * batch, [rng.randint(length // 2, length) for _ in range(batch)]):
            cases.append((num_threads, num_parts, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, lengths))
    assert all(pieces_per_sequence(case[4], case[1]) < pieces_per_sequence(case[4], case[1], min_piece_pages=0)
               for case in cases)
    return cases


def random_case(rng):
    batch = min(5000, int(2 ** rng.uniform(0, 12.3)))
    rows = rng.choice([16, 32, 64, 100, 128, 192, 256])
    h_kv = rng.choice([1, 1, 1, 2])
    num_sms = rng.choice([132, 132, 114, 7, 1, 264])
    num_parts = schedule.num_sm_parts_for(rows, h_kv, num_sms)
    num_threads = rng.choice([0, 0, 32, 64, 96, 1024])  # 0: the launcher's choice
    return num_threads, num_parts, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, random_lengths(rng, batch)


def assert_same_as_torch(binary, cases):
    for case, (metadata, num_splits) in zip(cases, run_harness(binary, cases)):
        num_threads, num_parts, _, _, lengths = case
        expected_metadata, expected_splits = schedule.compute_schedule_torch(
            torch.tensor(lengths, dtype=torch.int32), num_parts)
        where = f"threads {num_threads}, parts {num_parts}, b {len(lengths)}, lengths {lengths[:8]}..."
        assert torch.equal(metadata, expected_metadata), f"metadata differs ({where})"
        assert torch.equal(num_splits, expected_splits), f"num_splits differs ({where})"


def test_harness_matches_torch_on_random_inputs(harness):
    rng = random.Random(20261125)
    cases = [random_case(rng) for _ in range(300)]
    assert sum(one_part_per_sequence(case[4], case[1]) for case in cases) >= 8  # every mode exercised
    assert sum(pieces_per_sequence(case[4], case[1]) > 1 for case in cases) >= 10
    assert sum(snapped_bounds(case[4], case[1]) is not None for case in cases) >= 10
    assert_same_as_torch(harness, cases + fewer_pieces_cases(rng, 0))


@pytest.mark.parametrize("num_threads", [0, 32, 96, 1024])
def test_harness_matches_torch_pieces(harness, num_threads):
    # k = parts // b pieces per sequence: b = 64 on 132 parts (k = 2), few sequences on many parts, sequences with
    # fewer pages than pieces (empty pieces), zero-length ones, over several chunks (1500 parts).
    cases = []
    for batch, num_parts in ((1, 132), (2, 132), (3, 132), (64, 132), (33, 66), (40, 1500), (500, 1500)):
        for lengths in ([4096] * batch, [64 * (i % 5) for i in range(batch)],
                        [4096 + 64 * (i % 3) for i in range(batch)], [1] * batch, [0] * batch):
            cases.append((num_threads, num_parts, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, lengths))
    cases = [case for case in cases if pieces_per_sequence(case[4], case[1]) > 1]
    assert len(cases) >= 15
    assert_same_as_torch(harness, cases)


@pytest.mark.parametrize("num_threads", [0, 32, 96, 1024])
def test_harness_matches_torch_snapped(harness, num_threads):
    cases = snapped_cases(num_threads)
    assert len(cases) >= 12
    assert_same_as_torch(harness, cases)


@pytest.mark.parametrize("num_threads", [0, 32, 96, 1024])
def test_harness_matches_torch_snapped_by_count(harness, num_threads):
    cases = by_count_cases(num_threads)
    cost = schedule.SPLIT_COMBINE_PAGES_MANY_ROWS
    assert sum(by_count_taken(case[4], case[1], cost) for case in cases) >= 6
    for case, (metadata, num_splits) in zip(cases, run_harness(harness, cases, combine_pages=cost)):
        expected = schedule.compute_schedule_torch(torch.tensor(case[4], dtype=torch.int32), case[1],
                                                   split_combine_pages=cost)
        assert torch.equal(metadata, expected[0]) and torch.equal(num_splits, expected[1]), case[:2]


@pytest.mark.parametrize("num_threads", [0, 32, 96, 1024])
def test_harness_matches_torch_one_part_per_sequence(harness, num_threads):
    # The rule's branch across chunks: b below, at and one under the part count, sequences of one chunk
    # and of several (32 or 96 threads; b > 1024 with 1500 parts), the bounds past b on the last chunk.
    cases = []
    for batch, num_parts in ((1, 1), (1, 132), (2, 132), (64, 66), (65, 66), (66, 66), (100, 132), (128, 132),
                             (131, 132), (132, 132), (1024, 1500), (1025, 1500), (1499, 1500), (1500, 1500)):
        for length in (0, 1, 4096, 16384):
            lengths = [length] * batch
            cases.append((num_threads, num_parts, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, lengths))
        lengths = [4096 + 64 * (i % 3) for i in range(batch)]  # uneven by up to two pages: still one each
        cases.append((num_threads, num_parts, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, lengths))
    cases = [case for case in cases if one_part_per_sequence(case[4], case[1])]
    assert len(cases) >= 25  # b > parts / 2 (else pieces of sequences: the next test)
    assert_same_as_torch(harness, cases)
    for (_, num_parts, _, _, lengths), (metadata, num_splits) in zip(cases, run_harness(harness, cases)):
        pages = [-(-n // PAGE_SIZE) for n in lengths]
        assert num_splits.tolist() == [0] + list(torch.cumsum(torch.tensor([int(n > 0) for n in pages]), 0))
        assert metadata[:len(lengths), 0].tolist() == list(range(len(lengths)))


@pytest.mark.parametrize("num_threads", [0, 32, 64, 1024])
def test_harness_matches_torch_on_edge_batches(harness, num_threads):
    # Chunk edges (b = T - 1, T, T + 1 for the thread counts used), a part bound landing exactly on the
    # total, more parts than cost units, one sequence cut by every part.
    cases = []
    for batch in (1, 2, 31, 32, 33, 63, 64, 65, 1023, 1024, 1025, 2048, 2049):
        for lengths in ([0] * batch, [1] * batch, [64] * batch, [65 + 7 * i for i in range(batch)]):
            for num_parts in (1, 2, 66, 132, 1500):
                cases.append((num_threads, num_parts, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, lengths))
    cases.append((num_threads, 66, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [64 * 61]))  # total 66 = one unit per part
    cases.append((num_threads, 132, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [131072]))
    assert_same_as_torch(harness, cases)


def test_compute_schedule_is_torch_on_cpu_whatever_is_requested_but_kernel():
    cache_seqlens = torch.tensor([5, 0, 700], dtype=torch.int32)
    expected = schedule.compute_schedule_torch(cache_seqlens, schedule.num_sm_parts_for(256, 1, 132),
                                               split_combine_pages=schedule.split_cost_pages(256))
    for implementation in ("auto", "torch"):
        assert schedule.schedule_implementation(cache_seqlens.device, implementation) == schedule.TORCH
        metadata, num_splits = schedule.compute_schedule(cache_seqlens, 256, 1, num_sms=132,
                                                         implementation=implementation)
        assert torch.equal(metadata, expected[0]) and torch.equal(num_splits, expected[1])


def test_kernel_request_on_cpu_raises():
    cache_seqlens = torch.tensor([5], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="not a CUDA device"):
        schedule.compute_schedule(cache_seqlens, 128, 1, implementation="kernel")


def test_unknown_implementation_raises():
    cache_seqlens = torch.tensor([5], dtype=torch.int32)
    with pytest.raises(ValueError, match="^implementation: "):
        schedule.compute_schedule(cache_seqlens, 128, 1, implementation="cuda")


def test_emulated_kernel_matches_torch(emulated_kernel):
    """The kernel source with real threads: block scans, barriers, chunk carries, strided lengths and the
    launcher's thread count (several chunks of 1024 threads for the large batches)."""
    # Every emulated CUDA thread is an OS thread (a 1024-thread chunk costs ~0.3 s on 2 cores): many small
    # batches, few that take several chunks.
    rng = random.Random(4242)
    cases = []
    for _ in range(100):
        _, num_parts, page_size, overhead, lengths = random_case(rng)
        cases.append((rng.choice([1, 1, 2, 3]), num_parts, page_size, overhead, lengths[:rng.randint(1, 300)]))
    for batch, num_parts in ((1, 1), (1, 1500), (1025, 66), (2049, 1500), (3000, 132)):
        cases.append((1, num_parts, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, random_lengths(rng, batch)))
    cases.append((0, 66, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [4321] * 300))  # stride 0: an expanded tensor
    # One part per sequence: b = 128 on 132 parts (the benchmark's case), b = 64 on 66, and over two chunks.
    cases.append((1, 132, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [16384] * 128))
    cases.append((2, 66, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [4096 + 64 * (i % 2) for i in range(64)]))
    cases.append((1, 1500, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [64] * 1100))
    cases += [(1, *case[1:]) for case in snapped_cases(0)]
    cases.append((1, 132, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [4096] * 64))  # two pieces per sequence
    cases.append((1, 1500, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [64 * (i % 5) for i in range(40)]))  # 37 pieces
    cases += fewer_pieces_cases(rng, 1)
    assert sum(one_part_per_sequence(case[4], case[1]) for case in cases) >= 5
    assert sum(pieces_per_sequence(case[4], case[1]) > 1 for case in cases) >= 2
    assert sum(snapped_bounds(case[4], case[1]) is not None for case in cases) >= 12
    for (stride, num_parts, _, _, lengths), (metadata, num_splits) in zip(cases, run_harness(emulated_kernel, cases)):
        expected_metadata, expected_splits = schedule.compute_schedule_torch(
            torch.tensor(lengths, dtype=torch.int32), num_parts)
        where = f"stride {stride}, parts {num_parts}, b {len(lengths)}, lengths {lengths[:8]}..."
        assert torch.equal(metadata, expected_metadata), f"metadata differs ({where})"
        assert torch.equal(num_splits, expected_splits), f"num_splits differs ({where})"


def test_emulated_kernel_matches_torch_snapped_by_count(emulated_kernel):
    # The by-count candidate in the kernel source with real threads (stride 1), at the many-rows split cost.
    cases = [(1, *case[1:]) for case in by_count_cases(0)]
    cost = schedule.SPLIT_COMBINE_PAGES_MANY_ROWS
    for case, (metadata, num_splits) in zip(cases, run_harness(emulated_kernel, cases, combine_pages=cost)):
        expected = schedule.compute_schedule_torch(torch.tensor(case[4], dtype=torch.int32), case[1],
                                                   split_combine_pages=cost)
        assert torch.equal(metadata, expected[0]) and torch.equal(num_splits, expected[1]), case[:2]


def test_emulated_launcher_refuses_bad_parameters(emulated_kernel):
    stdin = "3\n1 0 64 5 8 5 1 10\n1 66 64 0 8 5 1 10\n1 66 64 5 8 -1 1 10\n"
    result = subprocess.run([str(emulated_kernel)], input=stdin, capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["error mla_metadata: batch, num_parts, page_size and "
                                          "sequence_overhead_pages must be >= 1"] * 2 + [
                                          "error mla_metadata: min_piece_pages must be >= 0"]


def test_emulated_kernel_has_no_data_races(tmp_path):
    """ThreadSanitizer on the emulated kernel: the shared-memory buffers the block scans and chunk loop
    reuse are separated by barriers (sharing one warp-total buffer between the two scans, for one, is
    reported). Skipped where the compiler or the system has no working ThreadSanitizer."""
    cxx = find_cxx()
    if cxx is None:
        pytest.skip("no host C++ compiler")
    binary = tmp_path / "mla_metadata_emulated_tsan"
    build = subprocess.run([cxx, "-std=c++20", "-O1", "-g", "-fsanitize=thread", "-pthread",
                            f"-I{ROOT / 'tests' / 'harness' / 'emulated_cuda'}", f"-I{ROOT / 'csrc'}", str(EMULATED),
                            "-o", str(binary)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"no ThreadSanitizer build: {build.stderr[-300:]}")
    rng = random.Random(77)
    cases = [(1, 66, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [rng.randint(0, 5000) for _ in range(batch)])
             for batch in (1, 40)]
    cases.append((2, 1500, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [rng.randint(0, 5000) for _ in range(1100)]))
    cases.append((1, 132, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [4096] * 128))  # one part per sequence
    cases.append((1, 132, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, [100] * 2049))  # snapped, over three chunks
    result = subprocess.run([str(binary)], input=harness_stdin(cases), capture_output=True, text=True,
                            env={**os.environ, "TSAN_OPTIONS": "halt_on_error=0"})
    if "FATAL: ThreadSanitizer" in result.stderr:
        pytest.skip(f"ThreadSanitizer cannot run here: {result.stderr[:300]}")
    assert "WARNING: ThreadSanitizer" not in result.stderr, result.stderr[:6000]
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == len(cases)
