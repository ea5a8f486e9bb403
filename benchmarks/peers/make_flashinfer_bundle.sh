#!/usr/bin/env bash
# Builds <repo>/.fi: a trimmed FlashInfer bundle for benchmarks/peers/flashinfer_mla.py (the sm90 "fa3" MLA paged decode
# kernel, JIT-compiled on the GPU machine, which has nvcc and ninja but no network and a 64 MiB per-call carry limit).
#
#   bash benchmarks/peers/make_flashinfer_bundle.sh            # needs pip + network (PyPI) here, python3 with zipfile
#
# Writes (about 8 MB instead of the 62 MB wheel, which unpacks to 426 MB):
#   .fi/flashinfer-<ver>-mla-sm90.tar.xz   flashinfer/ trimmed: top-level *.py, autotuner/ jit/ mla/ trace/ (all
#                                          that `import flashinfer.mla` loads, and the rest of those packages); data/:
#                                          the MLA sm90 sources (csrc/batch_mla_sm90_*.cu, batch_mla_config.jinja,
#                                          tvm_ffi_utils.h), include/ (FlashInfer's headers), cutlass/include,
#                                          cutlass/tools/util/include, cccl/{cub,thrust,libcudacxx/include},
#                                          spdlog/include
#                                          (the JIT's include dirs, kept whole; the closure of the sources' includes is
#                                          checked to resolve inside them or in the CUDA toolkit / system)
#   .fi/apache_tvm_ffi-<ver>-cp312-...whl  the one dependency missing on the GPU machine (its image has torch, jinja2,
#                                          filelock, packaging, requests, numpy, einops, tabulate, tqdm, click, ninja,
#                                          nvidia-ml-py, cuda-bindings; FlashInfer's other requirements, cutlass-dsl,
#                                          cudnn-frontend, cuda-tile, nccl4py, are not used on the fa3 MLA path)
#   .fi/MANIFEST.txt                       versions, sha256 and what was kept
# and adds /.fi/ to .git/info/exclude. Call the GPU machine with carry [".fi"].
#
# Env: FI_VERSION (0.7.2.post1), TVM_FFI_VERSION (0.1.15.post2), FI_WHEEL (use this wheel file instead of downloading),
#      FI_BUNDLE_DIR (output dir, default <repo>/.fi), PYTHON (python3 that has pip).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FI_VERSION=${FI_VERSION:-0.7.2.post1}
TVM_FFI_VERSION=${TVM_FFI_VERSION:-0.1.15.post2}
OUT=${FI_BUNDLE_DIR:-$REPO/.fi}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/fi_bundle.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# Wheels for the GPU machine: CPython 3.12, manylinux x86_64.
PLATFORM_ARGS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
               --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
if [ -n "${FI_WHEEL:-}" ]; then
  cp "$FI_WHEEL" "$WORK/"
else
  "$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM_ARGS[@]}" -d "$WORK" \
    "flashinfer-python==$FI_VERSION"
fi
"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM_ARGS[@]}" -d "$WORK/deps" \
  "apache-tvm-ffi==$TVM_FFI_VERSION"
FI_WHL=$(ls "$WORK"/flashinfer_python-*.whl)
TVM_WHL=$(ls "$WORK"/deps/apache_tvm_ffi-*.whl)

"$PY" - "$FI_WHL" "$TVM_WHL" "$WORK/stage" <<'EOF'
import os, re, sys, zipfile

fi_whl, tvm_whl, stage = sys.argv[1:4]
D = "flashinfer/data/"
PY_PACKAGES = ("autotuner", "jit", "mla", "trace")
DATA_TREES = ("include/", "cutlass/include/", "cutlass/tools/util/include/", "cccl/cub/cub/",
              "cccl/libcudacxx/include/", "cccl/thrust/thrust/", "spdlog/include/")
CSRC_SEEDS = ("batch_mla_config.jinja", "batch_mla_sm90_plan.cu", "batch_mla_sm90_run.cu",
              "batch_mla_sm90_binding.cu")
# The JIT's include search order (jit/cpp_ext.py: generated dir, cccl -I, then -isystem python, cuda, tvm_ffi,
# include, csrc, cutlass, spdlog).
INCLUDE_DIRS = ("cccl/cub/", "cccl/libcudacxx/include/", "cccl/thrust/", "include/", "csrc/", "cutlass/include/",
                "cutlass/tools/util/include/", "spdlog/include/")

fi = zipfile.ZipFile(fi_whl)
names = set(fi.namelist())
tvm_names = {n[len("tvm_ffi/include/"):] for n in zipfile.ZipFile(tvm_whl).namelist()
             if n.startswith("tvm_ffi/include/")}

keep = set()
for n in names:
    rel = n[len("flashinfer/"):]
    if not n.startswith("flashinfer/") or n.endswith("/"):
        continue
    if "/" not in rel and rel.endswith(".py"):
        keep.add(n)
    elif rel.split("/")[0] in PY_PACKAGES and not n.endswith(".pyc"):
        keep.add(n)
    elif n.startswith(D) and any(n[len(D):].startswith(t) for t in DATA_TREES):
        keep.add(n)

# Include closure of the MLA sm90 sources: every include must resolve inside the kept trees, in tvm_ffi's headers,
# or be a CUDA toolkit / system header (not in the wheel at all).
INC = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
todo = [D + "csrc/" + s for s in CSRC_SEEDS]
seen, outside, system = set(), set(), set()
while todo:
    path = todo.pop()
    if path in seen:
        continue
    seen.add(path)
    if path.startswith(D + "csrc/"):
        keep.add(path)
    text = fi.read(path).decode("utf-8", "replace")
    for kind, inc in INC.findall(text):
        if inc.endswith("batch_mla_sm90_config.inc") or inc in tvm_names:
            continue  # generated from batch_mla_config.jinja at JIT time / shipped by tvm_ffi
        cands = ([os.path.normpath(os.path.join(os.path.dirname(path), inc))] if kind == '"' else [])
        cands += [D + d + inc for d in INCLUDE_DIRS]
        hit = next((c for c in cands if c in names), None)
        if hit is None:
            system.add(inc)
            continue
        if hit not in keep and not hit.startswith(D + "csrc/"):
            outside.add(hit)
        todo.append(hit)
if outside:
    sys.exit(f"includes outside the kept trees: {sorted(outside)[:20]}")
missing = [s for s in CSRC_SEEDS if D + "csrc/" + s not in keep]
assert not missing, missing
print(f"include closure: {len(seen)} files; unresolved here (CUDA toolkit / system): {len(system)}")
print("  " + " ".join(sorted(system)))

for n in sorted(keep):
    dest = os.path.join(stage, n)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb") as handle:
        handle.write(fi.read(n))
with open(os.path.join(stage, "KEPT.txt"), "w") as handle:
    handle.write("\n".join(sorted(keep)) + "\n")
print(f"kept {len(keep)} of {len(names)} files")
EOF

mkdir -p "$OUT"
rm -f "$OUT"/flashinfer-*-mla-sm90.tar.xz "$OUT"/apache_tvm_ffi-*.whl
BUNDLE="$OUT/flashinfer-$FI_VERSION-mla-sm90.tar.xz"
tar -C "$WORK/stage" -cf - flashinfer | xz -T0 -9 > "$BUNDLE"
cp "$TVM_WHL" "$OUT/"
{
  echo "flashinfer-python==$FI_VERSION  wheel sha256 $(sha256sum "$FI_WHL" | cut -d' ' -f1)"
  echo "apache-tvm-ffi==$TVM_FFI_VERSION  $(basename "$TVM_WHL") sha256 $(sha256sum "$TVM_WHL" | cut -d' ' -f1)"
  echo "bundle $(basename "$BUNDLE") sha256 $(sha256sum "$BUNDLE" | cut -d' ' -f1)"
  echo "made $(date -u +%Y-%m-%dT%H:%M:%SZ) by benchmarks/peers/make_flashinfer_bundle.sh"
  echo "files kept from the wheel:"
  cat "$WORK/stage/KEPT.txt"
} > "$OUT/MANIFEST.txt"

EXCLUDE="$REPO/.git/info/exclude"
if [ -d "$REPO/.git" ] && ! grep -qx '/.fi/' "$EXCLUDE" 2>/dev/null; then
  mkdir -p "$(dirname "$EXCLUDE")"
  echo '/.fi/' >> "$EXCLUDE"
fi
du -sh "$OUT"
ls -la "$OUT"
