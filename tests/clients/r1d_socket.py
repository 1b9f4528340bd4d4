"""The `openai` and `ollama` packages' clients reaching r1d over its Unix socket (an httpx
transport), as every script in this directory builds them."""

import httpx


def openai_client(socket):
    """An `openai.OpenAI` on r1d's socket: no key (the socket's permissions decide), no retries
    (a refusal is seen once, as the script asserts it)."""
    import openai

    return openai.OpenAI(
        base_url="http://r1d/v1",
        api_key="not-needed",
        http_client=httpx.Client(transport=httpx.HTTPTransport(uds=socket)),
        max_retries=0,
    )


def ollama_client(socket):
    """An `ollama.Client` on r1d's socket."""
    import ollama

    return ollama.Client(host="http://r1d", transport=httpx.HTTPTransport(uds=socket))
