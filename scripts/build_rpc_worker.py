"""Builds llama.cpp's rpc-server as r1d-rpc-worker: see scripts/build-rpc-worker."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import compare  # noqa: E402  (bench/compare.py: sdist fetch, flag reading, object reuse)

# The rpc-server target of tools/rpc/CMakeLists.txt (binary bin/ggml-rpc-server).
TARGET = "ggml-rpc-server"
OVERRIDES = {"LLAMA_BUILD_TOOLS": "ON", "LLAMA_BUILD_SERVER": "OFF", "LLAMA_BUILD_COMMON": "ON",
             "LLAMA_CURL": "OFF", "GGML_RPC": "ON"}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True, help="cargo's release directory (holds build/)")
    ap.add_argument("--cache", default=os.environ.get("R1D_BENCH_CACHE", "~/.cache/r1d-bench"))
    ap.add_argument("--build-jobs", default=os.environ.get("R1D_BUILD_JOBS", "1"))
    args = ap.parse_args()

    cache = Path(args.cache).expanduser()
    vendored, cmake_cache = compare.sys_crate_dirs(args.bin)
    tree = compare.fetch_sdist(cache)
    entries = compare.read_cmake_cache(cmake_cache)
    if entries.get("GGML_RPC", ("", "OFF"))[1] != "ON":
        sys.exit(f"{cmake_cache} has GGML_RPC off: the plugin was built without ggml's RPC backend "
                 "(.cargo/config.toml sets it; a target directory built before that needs "
                 "`cargo clean -p llama-cpp-sys-2` once)")
    flags = compare.build_flags(entries)
    flags.update(OVERRIDES)

    # Only ggml's code goes into the worker: refuse a tree whose ggml differs from the vendored one.
    diffs = [d for d in compare.differing_files(tree, Path(vendored)) if d.startswith("ggml/")]
    blocking = [d for d in diffs
                if not any(f"ggml/src/{b}/" in d or f"ggml/src/{b} " in d
                           for b, sw in compare.BACKEND_DIRS.items() if flags.get(sw, "OFF") == "OFF")]
    if blocking:
        sys.exit("the sdist's ggml differs from the one llama-cpp-sys-2 vendors:\n  "
                 + "\n  ".join(blocking))

    build = cache / "rpc-worker" / "build"
    out = cache / "rpc-worker" / "r1d-rpc-worker"
    stamp = cache / "rpc-worker" / "flags.json"
    if stamp.exists() and json.loads(stamp.read_text()) == flags and out.exists():
        compare.log(f"r1d-rpc-worker: built before with these flags ({stamp})")
        print(out)
        return
    started = time.monotonic()
    build.mkdir(parents=True, exist_ok=True)
    cmd = ["cmake", "-S", str(tree), "-B", str(build)] + [f"-D{k}={v}" for k, v in flags.items()]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seeded, skipped = compare.seed_objects(build, tree, cmake_cache, entries)
    compare.log(f"reused {seeded} object files of llama-cpp-sys-2's build; {skipped} compiled here")
    subprocess.run(["nice", "-n", "10", "cmake", "--build", str(build), "-j", str(args.build_jobs),
                    "--target", TARGET], check=True, stdout=sys.stderr)
    shutil.copy2(build / "bin" / TARGET, out)
    stamp.write_text(json.dumps(flags, indent=1))
    compare.log(f"r1d-rpc-worker: built in {time.monotonic() - started:.0f} s")
    print(out)


if __name__ == "__main__":
    main()
