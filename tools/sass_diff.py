"""Whether a change to csrc/ changed the device code, without a GPU: compiles the kernel sources at a git revision and
in the working tree for sm_90a, disassembles both (cuobjdump -sass) and compares each kernel's instructions:

  identical        the same instructions
  registers only   the same instructions in the same order, other register numbers (no cost: nothing to time)
  DIFFERENT        anything else: time it on the GPU machine (CONTRIBUTING.md, the `ab` stage)

    python -m tools.sass_diff            # the working tree against HEAD
    python -m tools.sass_diff REV        # the working tree against REV

Needs nvcc (CUDA_HOME, /usr/local/cuda or PATH) and cuobjdump (beside nvcc, on PATH, or the copy that Triton's
NVIDIA backend ships). Exit status 0 when no kernel is DIFFERENT, 1 otherwise, 2 when a tool or a build fails."""
import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("csrc/mla_decode_kernel.cu", "csrc/mla_metadata_kernel.cu", "csrc/fp8_latent_write.cu")
# setup.py's nvcc flags (the code the extension runs), less -Xptxas=-v.
FLAGS = ("-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "-gencode=arch=compute_90a,code=sm_90a",
         "--expt-relaxed-constexpr")
_ADDRESS = re.compile(r"/\*[0-9a-f]{4,}\*/")
_REGISTER = re.compile(r"\bU?R\d+\b|\bU?P\d\b")
_ANONYMOUS = re.compile(r"(_GLOBAL__N__)[0-9a-f]{8}(_\d+_\w+?_cu_)[0-9a-f]{8}")


def cuda_tool(name: str) -> str | None:
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / name).exists():
            return str(Path(home) / "bin" / name)
    if found := shutil.which(name):
        return found
    try:
        import triton
    except ImportError:
        return None
    shipped = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(shipped) if shipped.exists() else None


def kernel_name(mangled: str) -> str:
    """Demangled where c++filt is found, else mangled; either way without the hashes of its file that the name of a
    kernel in an anonymous namespace holds (they change with the file's path and contents)."""
    if shutil.which("c++filt"):
        demangled = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip()
        if demangled:
            return demangled
    return _ANONYMOUS.sub(r"\1\2", mangled)


def kernels(sass: str) -> dict[str, list[str]]:
    """cuobjdump -sass text -> {kernel name: its instructions, addresses and encodings dropped}."""
    out = {}
    for block in re.split(r"\n\s*Function : ", sass)[1:]:
        name, body = block.split("\n", 1)
        lines = (line.strip() for line in body.split("\n"))
        out[kernel_name(name.strip())] = [_ADDRESS.sub("", line).split(";")[0].strip() for line in lines
                                          if _ADDRESS.match(line)]
    return out


def compare(before: list[str], after: list[str]) -> str:
    if before == after:
        return "identical"
    if [_REGISTER.sub("R", x) for x in before] == [_REGISTER.sub("R", x) for x in after]:
        return "registers only"
    return f"DIFFERENT ({len(before)} -> {len(after)} instructions)"


def disassemble(tree: Path, source: str, nvcc: str, cuobjdump: str, out_dir: Path) -> str:
    cubin = out_dir / (Path(source).stem + ".cubin")
    cccl = Path(nvcc).resolve().parent.parent / "include" / "cccl"
    cmd = [nvcc, *FLAGS, f"-I{tree / 'csrc'}", f"-I{cccl}", "-cubin", "-o", str(cubin), str(tree / source)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0:
        raise RuntimeError(f"nvcc failed on {tree / source}:\n{build.stderr[-3000:]}")
    return subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", default="HEAD", help="the revision to compare with (default HEAD)")
    args = parser.parse_args(argv)
    nvcc, cuobjdump = cuda_tool("nvcc"), cuda_tool("cuobjdump")
    if nvcc is None or cuobjdump is None:
        print(f"sass_diff: needs nvcc and cuobjdump (found {nvcc}, {cuobjdump})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        archive = subprocess.run(["git", "archive", args.rev, "csrc"], cwd=ROOT, capture_output=True)
        if archive.returncode != 0:
            print(f"sass_diff: git archive {args.rev}: {archive.stderr.decode().strip()}", file=sys.stderr)
            return 2
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        jobs = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for side, tree in (("before", base), ("after", ROOT)):
                for source in SOURCES:
                    out_dir = Path(tmp) / side / Path(source).stem
                    out_dir.mkdir(parents=True)
                    jobs[side, source] = pool.submit(disassemble, tree, source, nvcc, cuobjdump, out_dir)
            try:
                sass = {key: job.result() for key, job in jobs.items()}
            except RuntimeError as error:
                print(f"sass_diff: {error}", file=sys.stderr)
                return 2
    different = 0
    for source in SOURCES:
        before, after = kernels(sass["before", source]), kernels(sass["after", source])
        for name in sorted(before.keys() | after.keys()):
            if name not in before or name not in after:
                verdict = "DIFFERENT (only " + ("after" if name in after else "before") + ")"
            else:
                verdict = compare(before[name], after[name])
            different += verdict.startswith("DIFFERENT")
            print(f"{verdict:40s} {source}: {name}")
    print(f"sass_diff: {args.rev} -> working tree: {different} kernel(s) different")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
