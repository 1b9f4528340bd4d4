#!/usr/bin/env python3
"""Does r1d's plan hold under a memory cgroup limit? Run through bench/cgroup-fit (its header says
what is checked). Only the standard library. Stand-in answers are meaningless text: nothing here
looks at it, only at whether an answer came and what the kernel's memory controller counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

RESERVE = 256 << 20
# r1d's own memory before it plans (binary, plugins, tokenizer): not in a model's plan.
SLACK = 192 << 20
DEFAULT = ["DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.standin.gguf",
           "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.standin.gguf"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def own_memory_cgroup():
    """(directory, limit file, version) of the memory cgroup this process is in, or raises with
    the reason none can be used."""
    text = open("/proc/self/cgroup").read()
    for line in text.splitlines():
        num, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            d = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"))
            if os.path.isdir(d):
                return d, "memory.limit_in_bytes", 1
    for line in text.splitlines():
        if line.startswith("0::"):
            d = os.path.join("/sys/fs/cgroup", line[3:].lstrip("/"))
            control = os.path.join(d, "cgroup.subtree_control")
            if os.path.exists(control) and "memory" in open(control).read().split():
                return d, "memory.max", 2
            raise RuntimeError(
                f"cgroup v2, but {control} does not enable the memory controller for children "
                "(a cgroup with processes cannot; use --systemd-run on a systemd host)")
    raise RuntimeError("no memory cgroup controller is mounted where this process is")


def systemd_pid1():
    try:
        return os.readlink("/proc/1/exe").endswith("/systemd") and shutil.which("systemd-run")
    except OSError:
        return False


class Confined:
    """r1d under a memory limit: a child cgroup directory (v1 or v2) that a shell enters before it
    execs r1d, or a transient systemd scope (`systemd-run --scope -p MemoryMax=`)."""

    def __init__(self, args, config, limit, how):
        self.dir = tempfile.mkdtemp(prefix="r1d-cgroup-fit-")
        self.sock = os.path.join(self.dir, "r1d.sock")
        self.bin = args.bin
        cfg = os.path.join(self.dir, "r1d.toml")
        with open(cfg, "w") as f:
            f.write(config)
        r1d = [os.path.join(args.bin, "r1d"), "--user", "--dbus", "off", "--socket", self.sock,
               "--config", cfg, "--plugin-dir", args.bin]
        env = dict(os.environ, XDG_DATA_HOME=os.path.join(self.dir, "data"),
                   XDG_CACHE_HOME=os.path.join(self.dir, "cache"))
        self.cgroup = None
        if how == "systemd-run":
            cmd = ["systemd-run", "--scope", "--quiet", "--collect", "-p", f"MemoryMax={limit}",
                   "-p", "MemorySwapMax=0"] + r1d
        else:
            parent, limit_file, _ = own_memory_cgroup()
            self.cgroup = os.path.join(parent, f"r1d-cgroup-fit-{os.getpid()}-{limit}")
            os.mkdir(self.cgroup)
            with open(os.path.join(self.cgroup, limit_file), "w") as f:
                f.write(str(limit))
            try:
                with open(os.path.join(self.cgroup, "memory.swap.max"), "w") as f:
                    f.write("0")
            except OSError:
                pass
            cmd = ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh",
                   self.cgroup] + r1d
        self.log_path = os.path.join(self.dir, "r1d.log")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))
        if self.cgroup is None:
            # The scope's cgroup, as r1d sees it.
            for _ in range(100):
                try:
                    line = [l for l in open(f"/proc/{self.proc.pid}/cgroup")
                            if l.startswith("0::")][0]
                    if "r1d-cgroup-fit" not in line and ".scope" in line:
                        self.cgroup = os.path.join("/sys/fs/cgroup", line[3:].strip().lstrip("/"))
                        break
                except (OSError, IndexError):
                    pass
                time.sleep(0.1)

    def ctl(self, *a, timeout=600):
        out = subprocess.run([os.path.join(self.bin, "r1ctl"), "--socket", self.sock, "--json",
                              *a], capture_output=True, text=True, timeout=timeout)
        return out

    def settled(self, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return None
            out = self.ctl("status")
            if out.returncode == 0:
                s = json.loads(out.stdout)
                if s["state"] not in ("loading", "starting"):
                    return s
            time.sleep(0.3)
        raise RuntimeError(f"r1d did not settle in {timeout} s")

    def read(self, *names):
        for n in names:
            try:
                return open(os.path.join(self.cgroup, n)).read()
            except (OSError, TypeError):
                pass
        return None

    def oom_kills(self):
        text = self.read("memory.events", "memory.oom_control") or ""
        for line in text.splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return None

    def peak(self):
        v = self.read("memory.peak", "memory.max_usage_in_bytes")
        return int(v) if v and v.strip().isdigit() else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.cgroup and "r1d-cgroup-fit" in self.cgroup:
            for _ in range(50):
                try:
                    os.rmdir(self.cgroup)
                    break
                except OSError:
                    time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)


def drop_page_cache(path):
    """Asks the kernel to drop the file's cached pages: a page is charged to the cgroup that
    first reads it, so pages cached by an earlier run would be held by r1d without counting
    against its limit."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def check(args, name, how):
    """Returns True when both halves hold for `name`."""
    models = tempfile.mkdtemp(prefix=".cgroup-fit-", dir=args.standins)
    try:
        os.link(os.path.join(args.standins, name), os.path.join(models, name))
        config = (f'[store]\ndir = "{models}"\nscan_huggingface = false\nscan_ollama = false\n'
                  f'[server]\nparallel = 1\n[planner]\nreserve_ram_bytes = {RESERVE}\n')
        cfg = os.path.join(models, "plan.toml")
        with open(cfg, "w") as f:
            f.write(config)
        out = subprocess.run([os.path.join(args.bin, "r1d"), "--user", "--config", cfg,
                              "--plugin-dir", args.bin, "plan", "--json"],
                             capture_output=True, text=True, check=True,
                             env=dict(os.environ, XDG_DATA_HOME=os.path.join(models, "data")))
        cand = next(c for c in json.loads(out.stdout)["candidates"] if c.get("present"))
        planned = cand["ram_bytes"]
        ok = True
        for label, limit in (("plan + reserve", planned + RESERVE + SLACK),
                             ("90 %", (planned + RESERVE) * 9 // 10)):
            drop_page_cache(os.path.join(models, name))
            r1d = Confined(args, config, limit, how)
            try:
                s = r1d.settled()
                if s is None:
                    verdict, good = f"r1d exited ({r1d.proc.returncode})", False
                elif label == "90 %":
                    why = f"{s.get('error') or ''} {s.get('selection') or ''}"
                    good = s["state"] != "ready" and "RAM" in why and "short" in why
                    verdict = ("refused: " if good else "NOT refused: ") + why.strip()[:160]
                else:
                    a = r1d.ctl("ask", "--max-tokens", "4", "Hello?")
                    good = s["state"] == "ready" and a.returncode == 0 and r1d.proc.poll() is None
                    verdict = "loaded and answered" if good else \
                        f"state {s['state']}, ask rc {a.returncode}: {a.stderr.strip()[:160]}"
                kills = r1d.oom_kills()
                good = good and kills == 0
                peak = r1d.peak()
                print(f"{name}\t{label}\tplanned {planned / 1e9:.2f} GB\tlimit {limit / 1e9:.2f} GB"
                      f"\tpeak {peak / 1e9 if peak else float('nan'):.2f} GB\toom_kill {kills}"
                      f"\t{'ok' if good else 'FAIL'}\t{verdict}", flush=True)
                if not good:
                    log(open(r1d.log_path).read()[-3000:])
                ok = ok and good
            finally:
                r1d.stop()
        return ok
    finally:
        shutil.rmtree(models, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bin", required=True, help="directory of r1d, r1ctl and the plugins")
    p.add_argument("--standins", required=True, help="scripts/make-r1-standins' directory")
    p.add_argument("--systemd-run", action="store_true",
                   help="confine r1d in a transient systemd scope (MemoryMax=) instead of a "
                        "child cgroup directory (default on cgroup v2 with systemd as PID 1)")
    p.add_argument("names", nargs="*", default=DEFAULT, help="stand-in files to check")
    args = p.parse_args()
    how = "directory"
    if args.systemd_run:
        how = "systemd-run"
    else:
        try:
            own_memory_cgroup()
        except RuntimeError as e:
            if systemd_pid1():
                how = "systemd-run"
            else:
                log(f"cannot confine r1d here: {e}; systemd is not PID 1, so no transient scope")
                return 2
    log(f"confining r1d with: {how}")
    results = [check(args, n, how) for n in args.names]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
