"""Reads r1d's GET /metrics over the Unix socket and parses it with the `prometheus_client`
package's text-format parser (what a Prometheus server would accept). Run by
tests/tests/e2e/clients.rs after one answered chat request on the echo model."""

import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

sock = sys.argv[1]
http = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://r1d")
r = http.get("/metrics")
assert r.status_code == 200, r.text
assert r.headers["content-type"].startswith("text/plain"), r.headers

families = {f.name: f for f in text_string_to_metric_families(r.text)}
samples = {}
for f in families.values():
    for s in f.samples:
        samples.setdefault(s.name, []).append(s)


def one(name, **labels):
    found = [s for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert found, (name, labels, sorted(samples))
    return found[0].value


# Requests by route and status (the chat itself, and the models list before it).
assert one("r1d_http_requests_total", route="/v1/chat/completions", status="200") >= 1
assert families["r1d_http_requests"].type == "counter", families["r1d_http_requests"]
# Histograms with buckets.
assert families["r1d_http_request_duration_seconds"].type == "histogram"
assert one("r1d_http_request_duration_seconds_count", route="/v1/chat/completions") >= 1
assert one("r1d_time_to_first_token_seconds_count") >= 1
assert any(s.labels.get("le") == "+Inf" for s in samples["r1d_time_to_first_token_seconds_bucket"])
# Tokens.
assert one("r1d_prompt_tokens_total") > 0
assert one("r1d_generated_tokens_total") == 3, samples["r1d_generated_tokens_total"]
# Engine state and the resident model as labels.
assert one("r1d_model_state", state="ready") == 1
assert one("r1d_model_state", state="loading") == 0
assert one("r1d_model_resident", model="DeepSeek-R1 echo", backend="echo") == 1
assert one("r1d_queue_depth") == 0
assert one("r1d_requests_active") == 0
assert one("r1d_model_load_duration_seconds_count", kind="load", outcome="ok") >= 1
print("metrics: all checks passed")
