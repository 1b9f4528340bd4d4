#!/usr/bin/env python3
"""Planner estimates against measured memory and speed, with the R1 stand-ins.

Run through bench/plan-accuracy (its header says what is measured). Only the standard library.
Stand-in answers are meaningless text: nothing here looks at it, only at sizes and timings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

GIB = 1 << 30

# Published file stem (as scripts/make-r1-standins names the stand-ins) -> r1d's variant id.
STEMS = {
    "DeepSeek-R1-Distill-Qwen-1.5B": "deepseek-r1:1.5b",
    "DeepSeek-R1-Distill-Qwen-7B": "deepseek-r1:7b",
    "DeepSeek-R1-Distill-Llama-8B": "deepseek-r1:8b",
    "DeepSeek-R1-0528-Qwen3-8B": "deepseek-r1-0528:8b",
    "DeepSeek-R1-Distill-Qwen-14B": "deepseek-r1:14b",
    "DeepSeek-R1-Distill-Qwen-32B": "deepseek-r1:32b",
    "DeepSeek-R1-Distill-Llama-70B": "deepseek-r1:70b",
    "DeepSeek-R1": "deepseek-r1:671b",
    "DeepSeek-R1-0528": "deepseek-r1-0528:671b",
}
SPEED = ["deepseek-r1:1.5b", "deepseek-r1:7b", "deepseek-r1:8b"]
NAME = re.compile(r"^(?P<stem>.+)-(?P<quant>Q4_K_M|Q5_K_M|Q6_K|Q8_0|F16)\.standin\.gguf$")

TEXT = ("The history of Paris spans more than two thousand years, from a Celtic settlement on an "
        "island in the Seine to the capital of France and one of the great cities of the world.")
LONG_PROMPT = " ".join([TEXT] * 8) + " Continue this history in detail."


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def gb(n):
    return f"{n / 1e9:.2f}"


def err(planned, measured):
    return f"{(planned - measured) / measured * 100:+.0f}%"


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def descendants(pid):
    """pid and every process below it (r1d runs each model in a worker child process)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def rss(pid):
    """(Rss, anonymous, file-backed) bytes of pid and its descendants (the model's worker
    process), from /proc/PID/smaps_rollup. A page both map counts twice: r1d itself does not map
    the model file, so the sum is what the service holds."""
    total = anon = 0
    for p in descendants(pid):
        fields = {}
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                        fields[parts[0][:-1]] = int(parts[1]) * 1024
        except OSError:
            continue
        total += fields.get("Rss", 0)
        anon += fields.get("Anonymous", 0)
    return total, anon, total - anon


class Daemon:
    """r1d in user mode on a private socket, store and config; killed on exit."""

    def __init__(self, bin_dir, model=None, store_dir=None, context=None, backend=None,
                 parallel=None):
        self.bin = bin_dir
        self.dir = tempfile.mkdtemp(prefix="r1d-plan-accuracy-")
        self.sock = os.path.join(self.dir, "r1d.sock")
        cfg = os.path.join(self.dir, "r1d.toml")
        with open(cfg, "w") as f:
            f.write("[store]\ndir = %s\nscan_huggingface = false\nscan_ollama = false\n"
                    % json.dumps(store_dir or os.path.join(self.dir, "models")))
        args = [os.path.join(bin_dir, "r1d"), "--user", "--socket", self.sock, "--config", cfg,
                "--plugin-dir", bin_dir, "--dbus", "off"]
        if model:
            args += ["--model", model]
        if context:
            args += ["--context-length", str(context)]
        if backend:
            args += ["--backend", backend]
        if parallel:
            args += ["--parallel", str(parallel)]
        env = dict(os.environ, XDG_DATA_HOME=os.path.join(self.dir, "data"),
                   HF_HUB_CACHE=os.path.join(self.dir, "hf"),
                   OLLAMA_MODELS=os.path.join(self.dir, "ollama"))
        self.log_path = os.path.join(self.dir, "r1d.log")
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))
        self.started = time.monotonic()

    def ctl(self, *args, timeout=900):
        out = subprocess.run([os.path.join(self.bin, "r1ctl"), "--socket", self.sock, "--json",
                              *args], capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"r1ctl {' '.join(args)}: {out.stderr.strip()}")
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def wait_ready(self, timeout=900):
        while time.monotonic() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"r1d exited ({self.proc.returncode}); log: {self.tail()}")
            try:
                status = self.ctl("status", timeout=30)[-1]
                if status.get("state") == "ready":
                    return time.monotonic() - self.started
                if status.get("state") == "no-model" and status.get("error"):
                    raise RuntimeError(f"load failed: {status['error']}")
            except (RuntimeError, json.JSONDecodeError, subprocess.TimeoutExpired) as e:
                if "load failed" in str(e):
                    raise
            time.sleep(0.5)
        raise RuntimeError("not ready in time")

    def tail(self):
        with open(self.log_path) as f:
            return "".join(f.readlines()[-5:]).strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["rm", "-rf", self.dir])


# r1d's own memory beside the model that the planner adds to every RAM figure
# (daemon/src/planner.rs HOST_OVERHEAD, 256 MiB): taken off both estimates before comparing them.
HOST_OVERHEAD = 256 << 20


def plan(bin_dir, store_dir=None):
    """The planner's candidates for this machine, by (variant, quantization). With `store_dir`
    the files there are present, and r1d asks their backend (llama.cpp's no_alloc dry run) for
    the RAM figure; without, every figure is the catalog formula's."""
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "r1d.toml")
        with open(cfg, "w") as f:
            # Planned for one answer at a time, as the loads below run.
            f.write("[server]\nparallel = 1\n")
            if store_dir:
                f.write("[store]\ndir = %s\nscan_huggingface = false\nscan_ollama = false\n"
                        % json.dumps(store_dir))
        env = dict(os.environ, XDG_DATA_HOME=os.path.join(d, "data"),
                   HF_HUB_CACHE=os.path.join(d, "hf"), OLLAMA_MODELS=os.path.join(d, "ollama"))
        out = subprocess.run([os.path.join(bin_dir, "r1d"), "--user", "--config", cfg,
                              "--plugin-dir", bin_dir, "plan", "--json"],
                             capture_output=True, text=True, env=env, check=True)
    p = json.loads(out.stdout)
    return {(c["variant"], c["quantization"]): c for c in p["candidates"]}


def standins(directory):
    found = []
    for name in sorted(os.listdir(directory)):
        m = NAME.match(name)
        if m and m["stem"] in STEMS:
            found.append((os.path.join(directory, name), STEMS[m["stem"]], m["quant"]))
    variants, quants = list(STEMS.values()), ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16"]
    found.sort(key=lambda f: (variants.index(f[1]), quants.index(f[2])))
    return found


def identification(args, files):
    print("## Identification (r1d's store listing of the stand-in directory)\n")
    # The echo backend serves a GGUF's header without its weights: nothing heavy is loaded.
    small = min(files, key=lambda f: os.path.getsize(f[0]))[0]
    d = Daemon(args.bin, model=small, store_dir=args.standins, context=512, backend="echo")
    ok = True
    try:
        d.wait_ready()
        listed = {m["path"]: m for m in d.ctl("models")[-1]["models"]}
    finally:
        d.stop()
    print(f"{'file':<52} {'variant':<22} {'quant':<7} {'status':<6} {'size = file':<11} ok")
    for path, variant, quant in files:
        m = listed.get(path, {})
        size = os.path.getsize(path)
        good = (m.get("variant") == variant and m.get("quantization") == quant
                and m.get("status") == "ok" and m.get("size_bytes") == size)
        ok &= good
        print(f"{os.path.basename(path):<52} {str(m.get('variant')):<22} "
              f"{str(m.get('quantization')):<7} {str(m.get('status')):<6} "
              f"{str(m.get('size_bytes') == size):<11} {'yes' if good else 'NO'}")
    print()
    return ok


def measure(args, path, cand, speed):
    """Load `path` at the plan's context; RSS after load and after one answer; speed runs."""
    # One sequence: the estimates compared are for one (r1d's default runs up to 4 answers at
    # once, each with its own KV cache).
    d = Daemon(args.bin, model=path, context=cand["context_length"], parallel=1)
    r = {}
    try:
        r["load_s"] = d.wait_ready()
        time.sleep(2)
        r["load"] = rss(d.proc.pid)
        if speed:
            runs = []
            for i in range(args.speed_runs):
                lines = d.ctl("ask", "--system", f"Run {i} of a benchmark.", "--temperature", "0",
                              "--max-tokens", str(args.gen_tokens), LONG_PROMPT)
                runs.append(lines[-1]["timings"])
                if i == 0:
                    r["answer"] = rss(d.proc.pid)
            r["prompt_n"] = runs[0]["prompt_n"]
            r["predicted_n"] = runs[0]["predicted_n"]
            r["pp"] = statistics.median(t["prompt_per_second"] for t in runs)
            r["tg"] = statistics.median(t["predicted_per_second"] for t in runs)
            # Other work on the CPUs only slows a run down: the best run is the closest to what
            # the machine does alone.
            r["pp_best"] = max(t["prompt_per_second"] for t in runs)
            r["tg_best"] = max(t["predicted_per_second"] for t in runs)
        else:
            d.ctl("ask", "--temperature", "0", "--max-tokens", "8", "Say hello.")
            r["answer"] = rss(d.proc.pid)
        r["peak"] = max(r["load"][0], r["answer"][0])
    finally:
        d.stop()
    return r


def main():
    p = argparse.ArgumentParser(description="Planner estimates against measurements, with the "
                                "R1 stand-ins (scripts/make-r1-standins).")
    p.add_argument("--bin", required=True, help="directory of r1d, r1ctl and the plugins")
    p.add_argument("--standins", required=True, help="the stand-in directory")
    p.add_argument("--max-plan-gib", type=float, default=11.0,
                   help="load only stand-ins the planner puts at or below this much RAM "
                        "(default 11; llama.cpp has been seen to hold ~1.35x the plan)")
    p.add_argument("--only", default="", help="comma list of variant:quant (e.g. "
                   "deepseek-r1:7b:Q4_K_M) to load; default: all that fit")
    p.add_argument("--no-identify", action="store_true", help="skip the store listing check")
    p.add_argument("--no-load", action="store_true", help="estimates only, load nothing")
    p.add_argument("--speed-runs", type=int, default=3)
    p.add_argument("--gen-tokens", type=int, default=64)
    args = p.parse_args()

    files = standins(args.standins)
    print(f"# plan-accuracy: {os.uname().nodename}, {os.cpu_count()} CPUs, "
          f"{gb(mem_available())} GB available, load average {os.getloadavg()[0]:.1f} "
          f"at the start\n")
    if not files:
        sys.exit(f"plan-accuracy: no stand-ins in {args.standins}: run scripts/make-r1-standins")
    ident_ok = True if args.no_identify else identification(args, files)
    cands = plan(args.bin)
    log("plan-accuracy: asking llama.cpp for its estimate of every stand-in (r1d plan with the "
        "stand-ins present)")
    backend = plan(args.bin, args.standins)
    only = {s.strip() for s in args.only.split(",") if s.strip()}

    rows = []
    for path, variant, quant in files:
        c = cands.get((variant, quant))
        if c is None:
            rows.append((path, variant, quant, None, None, "not in the plan"))
            continue
        speed = quant == "Q4_K_M" and variant in SPEED
        key = f"{variant}:{quant}"
        note, r = "", None
        if args.no_load:
            note = "not loaded (--no-load)"
        elif only and key not in only:
            note = "not loaded (not in --only)"
        elif c["ram_bytes"] > args.max_plan_gib * GIB:
            note = f"not loaded: plan > {args.max_plan_gib:g} GiB"
        elif c["ram_bytes"] * 1.5 + 2 * GIB > mem_available():
            note = f"not loaded: {gb(mem_available())} GB available now"
        else:
            log(f"plan-accuracy: loading {os.path.basename(path)} "
                f"(plan {gb(c['ram_bytes'])} GB, context {c['context_length']})")
            try:
                r = measure(args, path, c, speed)
            except Exception as e:  # noqa: BLE001 (reported in the table)
                note = f"failed: {e}"
        rows.append((path, variant, quant, c, r, note))

    ctx = sorted({c["context_length"] for _p, _v, _q, c, _r, _n in rows if c})
    print(f"## Memory (GB = 1e9 bytes, context {ctx}, one sequence, CPU only)\n")
    print("formula: the catalog formula (`r1d plan --json` without the file); llama.cpp: its "
          "no_alloc dry run of the file (the plugin's estimate, `r1d plan --json` with the file "
          "present), both without r1d's own 0.27 GB; f-err = (formula - llama.cpp) / llama.cpp. "
          "plan: what r1d plans with the file present (llama.cpp + 0.27 GB). Measured: Rss of "
          "r1d and its model's worker process = anonymous + file-backed (/proc/PID/smaps_rollup) after the load "
          "and after one answer; err = (plan - measured) / measured, negative = r1d held more "
          "than it planned.\n")
    print(f"{'variant':<22} {'quant':<7} {'file':>6} {'formula':>7} {'llama':>6} {'f-err':>6} "
          f"{'plan':>6} {'load s':>6} {'loaded':>6} {'anon':>5} {'file':>5} {'err':>5} "
          f"{'answer':>6} {'anon':>5} {'file':>5} {'err':>5}  note")
    worst, over = 0.0, []
    for path, variant, quant, c, r, note in rows:
        size = gb(os.path.getsize(path))
        if c is None:
            print(f"{variant:<22} {quant:<7} {size:>6} {'-':>7}  {note}")
            continue
        b = backend.get((variant, quant), {})
        formula = c["ram_bytes"] - HOST_OVERHEAD
        if b.get("memory_source") == "backend":
            llama = b["ram_bytes"] - HOST_OVERHEAD
            planned = b["ram_bytes"]
            ferr = (formula - llama) / llama * 100
            worst = max(worst, abs(ferr))
            fcols = f"{gb(formula):>7} {gb(llama):>6} {ferr:>+5.1f}% {gb(planned):>6}"
        else:
            planned = c["ram_bytes"]
            fcols = f"{gb(formula):>7} {'-':>6} {'':>6} {gb(planned):>6}"
        if r is None:
            print(f"{variant:<22} {quant:<7} {size:>6} {fcols} {'':>6} {'':>6} {'':>5} {'':>5} "
                  f"{'':>5} {'':>6} {'':>5} {'':>5} {'':>5}  {note}")
            continue
        (lt, la, lf), (at, aa, af) = r["load"], r["answer"]
        if max(lt, at) > planned:
            over.append(f"{variant} {quant}")
        print(f"{variant:<22} {quant:<7} {size:>6} {fcols} {r['load_s']:>6.1f} "
              f"{gb(lt):>6} {gb(la):>5} {gb(lf):>5} {err(planned, lt):>5} "
              f"{gb(at):>6} {gb(aa):>5} {gb(af):>5} {err(planned, at):>5}  {note}")
    print(f"\nformula vs llama.cpp: worst |f-err| {worst:.1f}% (target 5%). "
          + (f"r1d held MORE than planned: {', '.join(over)}." if over
             else "r1d never held more than its plan in the rows measured.") + "\n")

    print("## Speed (stand-ins' Q4_K_M on this CPU; llama.cpp timings, median and best of "
          f"{args.speed_runs} runs; the planner estimates generation only)\n")
    print(f"{'variant':<22} {'quant':<7} {'prompt tok':>10} {'pp tok/s':>9} {'best':>6} "
          f"{'gen tok':>8} {'tg tok/s':>9} {'best':>6} {'plan tg':>8} {'err':>5} {'best':>5}")
    for path, variant, quant, c, r, note in rows:
        if not (quant == "Q4_K_M" and variant in SPEED):
            continue
        if r is None or "tg" not in r:
            print(f"{variant:<22} {quant:<7} {note or 'not measured'}")
            continue
        est = c["est_generation_tokens_per_s"]
        print(f"{variant:<22} {quant:<7} {r['prompt_n']:>10} {r['pp']:>9.1f} {r['pp_best']:>6.1f} "
              f"{r['predicted_n']:>8} {r['tg']:>9.2f} {r['tg_best']:>6.2f} {est:>8.1f} "
              f"{err(est, r['tg']):>5} {err(est, r['tg_best']):>5}")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (speed is shared with whatever "
          "else runs on the CPUs)")
    return 0 if ident_ok else 1


if __name__ == "__main__":
    sys.exit(main())
