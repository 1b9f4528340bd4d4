"""Per-token overhead of llama.cpp RPC workers against the local model: see bench/rpc-overhead."""

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (bench/compare.py: the model's end-of-generation ids)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=600)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def call(sock, method, path, body=None):
    c = UnixHTTP(sock)
    c.request(method, path, body=json.dumps(body) if body else None,
              headers={"content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_worker(binary, port, log):
    # SIGPIPE ignored, as systemd runs it (see r1d-rpc-worker@.service).
    return subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log,
                            preexec_fn=lambda: signal.signal(signal.SIGPIPE, signal.SIG_IGN))


def start_r1d(args, tmp, name, config):
    d = Path(tmp) / name
    d.mkdir(mode=0o700)
    (d / "r1d.toml").write_text(config)
    sock = str(d / "r1d.sock")
    env = dict(os.environ, XDG_DATA_HOME=str(d / "data"), OMP_WAIT_POLICY="passive")
    p = subprocess.Popen([f"{args.bin}/r1d", "--user", "--socket", sock, "--config", str(d / "r1d.toml"),
                          "--plugin-dir", args.bin, "--dbus", "off", "--model", args.model,
                          "--context-length", "2048", "--parallel", "1"],
                         stdout=subprocess.DEVNULL, stderr=open(d / "log", "w"), env=env)
    for _ in range(600):
        try:
            status, health = call(sock, "GET", "/health")
            if health and health.get("status") == "ready":
                return p, sock
        except OSError:
            pass
        if p.poll() is not None:
            raise SystemExit(f"r1d ({name}) exited: {(d / 'log').read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"r1d ({name}) did not become ready: {(d / 'log').read_text()[-2000:]}")


def measure(sock, tokens, round_no, bias):
    body = {"messages": [{"role": "user", "content": f"Round {round_no}. Tell a long story about a lighthouse."}],
            "temperature": 0, "max_tokens": tokens, "logit_bias": bias}
    status, answer = call(sock, "POST", "/v1/chat/completions", body)
    if status != 200:
        raise SystemExit(f"request failed: {status} {answer}")
    t = answer["timings"]
    return t["predicted_ms"] / max(t["predicted_n"], 1), t["prompt_per_second"]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--worker", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gpu-layers", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--model", default=os.path.expanduser(
        os.environ.get("R1D_TEST_MODELS", "~/.cache/r1d-test-models") + "/SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()

    # End-of-generation tokens banned, so every round generates exactly --tokens.
    bias = {str(i): -100 for i in compare.gguf_eog_ids(args.model)}
    results = {"local": [], "split": []}
    prompt = {"local": [], "split": []}
    with tempfile.TemporaryDirectory() as tmp:
        ports = [free_port() for _ in range(args.workers)]
        wlog = open(Path(tmp) / "workers.log", "w")
        workers = [start_worker(args.worker, p, wlog) for p in ports]
        try:
            time.sleep(1)
            endpoints = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
            configs = {
                "local": "",
                "split": f"[model]\ngpu_layers = {args.gpu_layers}\n\n[backends.llamacpp]\nrpc_workers = [{endpoints}]\n",
            }
            for r in range(args.rounds):
                for name in ("local", "split"):
                    p, sock = start_r1d(args, tmp, f"{name}-{r}", configs[name])
                    try:
                        measure(sock, 8, -1, bias)  # warm-up: first touch of the weights
                        ms, pps = measure(sock, args.tokens, r, bias)
                    finally:
                        p.terminate()
                        p.wait()
                    results[name].append(ms)
                    prompt[name].append(pps)
                    print(f"round {r + 1} {name:5}: {ms:7.2f} ms/token ({1000 / ms:6.1f} tokens/s), "
                          f"prompt {pps:7.1f} tokens/s", flush=True)
        finally:
            for w in workers:
                w.terminate()
                w.wait()
    loc, spl = statistics.median(results["local"]), statistics.median(results["split"])
    print(f"\nmodel {Path(args.model).name}, {args.tokens} tokens, {args.rounds} rounds, "
          f"{args.workers} loopback workers with {args.gpu_layers} layers")
    print(f"local: median {loc:.2f} ms/token ({1000 / loc:.1f} tokens/s), prompt {statistics.median(prompt['local']):.0f} tokens/s")
    print(f"split: median {spl:.2f} ms/token ({1000 / spl:.1f} tokens/s), prompt {statistics.median(prompt['split']):.0f} tokens/s")
    print(f"overhead of the split: {spl - loc:+.2f} ms/token ({(spl / loc - 1) * 100:+.0f} %)")


if __name__ == "__main__":
    main()
