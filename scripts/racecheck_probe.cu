// Which hand-overs between warpgroups does compute-sanitizer's racecheck see as synchronisation?
// Each kernel is race-free by construction; run `compute-sanitizer --tool racecheck ./racecheck_probe N`
// (scripts/racecheck_probe.sh) and see which ones it flags. The seesaw kernel uses patterns 1-3.
//   1  one-way hand-over: WG0 writes, bar.arrive; WG1 bar.sync, reads (kBarPA / kBarPB in the kernel)
//   2  the same in a loop: WG0 rewrites the slot only after WG1 handed something back (bar.arrive the other way)
//   3  both warpgroups bar.sync, then read each other's halves, slots alternating by iteration (epilogue sums)
//   4  as 1 with an mbarrier (4 warp arrivals, parity wait) instead of the named barrier
//   5  as 3 in a 384-thread block whose third warpgroup leaves at once (the kernel's shape: 256-thread
//      named barriers in a 384-thread CTA)
//   6  as 5 with, in every iteration, a one-way bar.arrive -> bar.sync hand-over on another barrier (no data
//      on it): the seesaw's epilogue next to its per-pair hand-overs
//   7  the seesaw epilogue as the kernel runs it (racecheck reports it there, runs 18-48): setmaxnreg (producer
//      warpgroup down to 40 registers, consumers up to 232), the producer's warps 9-11 gone and one thread of
//      warp 8 waiting on an mbarrier that the consumer warps arrive at every iteration, then lanes 4q write a
//      row's sum, bar.sync of both warpgroups, every lane reads both warpgroups' sums, slots by parity
//   8  as 7 with the seesaw's per-page max hand-over before the sums (a single-page item): lanes 4q of WG0 write m,
//      bar.arrive; WG1 bar.sync, reads m (the kernel's kBarPA)
//   9  as 8 with that hand-over as a bar.sync of both warpgroups
//  10  as 8 with the producer's phase carrying data: each phase a cp.async.bulk (global -> shared, complete_tx on the
//      full mbarrier) that the consumers read after their wait, as the kernel's page loads
#include <cstdio>
#include <cstdlib>

#include <cuda_runtime.h>

__device__ __forceinline__ void bar_arrive(int id, int n) { asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void bar_sync(int id, int n) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory"); }

__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  unsigned done = 0;
  while (!done)
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
}

// Pattern 7: the kernel's epilogue exchange in the kernel's role split. The producer thread and the consumer warps
// hand phases over through a full/empty pair of mbarriers, as the kernel's page stages do (no data on them).
__global__ void __launch_bounds__(384, 1) probe_epilogue(int iters, float* out, int pattern, const float* src) {
  __shared__ float sums[2][2][64];
  __shared__ float row_max[64];
  __shared__ alignas(128) float page[256];
  __shared__ unsigned long long full, empty;
  const unsigned full_bar = static_cast<unsigned>(__cvta_generic_to_shared(&full));
  const unsigned empty_bar = static_cast<unsigned>(__cvta_generic_to_shared(&empty));
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(full_bar) : "memory");
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 8;" ::"r"(empty_bar) : "memory");
  }
  __syncthreads();
  if (threadIdx.x >= 256) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (threadIdx.x == 256)
      for (int k = 0; k < iters; ++k) {
        if (k > 0) mbar_wait(empty_bar, (k - 1) & 1);  // the consumers are done with phase k - 1
        if (pattern == 10) {
          const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(page));
          asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(full_bar), "r"(1024) : "memory");
          asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                       ::"r"(dst), "l"(src + 256 * k), "r"(1024), "r"(full_bar) : "memory");
        } else {
          asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(full_bar) : "memory");
        }
      }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int wg = threadIdx.x / 128, lane = threadIdx.x % 32, row0 = (threadIdx.x % 128) / 32 * 16 + lane / 4;
  float acc = 0.f;
  for (int k = 0; k < iters; ++k) {
    mbar_wait(full_bar, k & 1);
    if (pattern == 10) acc += page[(threadIdx.x + k) % 256];
    __syncwarp();
    if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(empty_bar) : "memory");
    if (pattern >= 8) {  // the per-page max hand-over, WG0 -> WG1
      if (wg == 0) {
        if (lane % 4 == 0) row_max[row0] = k + row0;
        if (pattern == 9) bar_sync(2, 256);
        else bar_arrive(2, 256);
      } else {
        bar_sync(2, 256);
        acc += row_max[row0];
      }
    }
    float* slot = &sums[k & 1][0][0];
    if (lane % 4 == 0) {
      slot[wg * 64 + row0] = k + row0;
      slot[wg * 64 + row0 + 8] = k + row0 + 8;
    }
    bar_sync(1, 256);
    acc += slot[row0] + slot[64 + row0] + slot[row0 + 8] + slot[64 + row0 + 8];
  }
  out[threadIdx.x] = acc;
}

__global__ void probe(int pattern, int iters, float* out) {
  __shared__ float slot[2][256];
  __shared__ unsigned long long mbar;
  const int wg = threadIdx.x / 128, i = threadIdx.x % 128;
  const unsigned bar_addr = static_cast<unsigned>(__cvta_generic_to_shared(&mbar));
  if (threadIdx.x == 0) asm volatile("mbarrier.init.shared::cta.b64 [%0], 4;" ::"r"(bar_addr) : "memory");
  __syncthreads();
  if (wg == 2) return;
  const bool extra_handover = pattern == 6;
  if (pattern == 5 || pattern == 6) pattern = 3;
  float acc = 0.f;
  for (int k = 0; k < iters; ++k) {
    if (pattern == 1 && k > 0) break;  // one hand-over: a second write would need the reverse hand-over (pattern 2)
    if (pattern == 1 || pattern == 2) {
      if (wg == 0) {
        if (pattern == 2 && k > 0) bar_sync(2, 256);  // WG1 is done reading the previous value
        slot[0][i] = k + i;
        bar_arrive(1, 256);
      } else {
        bar_sync(1, 256);
        acc += slot[0][(i + 1) % 128];
        if (pattern == 2 && k + 1 < iters) bar_arrive(2, 256);
      }
    } else if (pattern == 3) {
      if (extra_handover) {
        if (wg == 0) bar_arrive(2, 256);
        else bar_sync(2, 256);
      }
      slot[k & 1][threadIdx.x] = k + i;  // each warpgroup writes its half of the slot
      bar_sync(1, 256);
      acc += slot[k & 1][(threadIdx.x + 128) % 256];  // and reads the other half
    } else if (pattern == 4) {
      if (wg == 0) {
        slot[0][i] = k + i;
        if (i % 32 == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar_addr) : "memory");
        break;  // one hand-over only: reuse would need the reverse direction as well
      } else {
        unsigned done = 0;
        while (!done)
          asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\nselp.u32 %0, 1, 0, p;\n}\n"
                       : "=r"(done) : "r"(bar_addr) : "memory");
        acc += slot[0][(i + 1) % 128];
        break;
      }
    }
  }
  out[threadIdx.x] = acc;
}

int main(int argc, char** argv) {
  const int pattern = argc > 1 ? atoi(argv[1]) : 1;
  float* out = nullptr;
  cudaMalloc(&out, 256 * sizeof(float));
  float* src = nullptr;
  cudaMalloc(&src, 4 * 256 * sizeof(float));
  cudaMemset(src, 0, 4 * 256 * sizeof(float));
  if (pattern >= 7)
    probe_epilogue<<<1, 384>>>(4, out, pattern, src);
  else
    probe<<<1, pattern >= 5 ? 384 : 256>>>(pattern, 4, out);
  cudaError_t err = cudaDeviceSynchronize();
  printf("pattern %d: %s\n", pattern, cudaGetErrorString(err));
  return err == cudaSuccess ? 0 : 1;
}
