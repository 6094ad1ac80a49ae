"""Embedders: the local hashing embedder, and the OpenAI client against a local server speaking
the OpenAI embeddings wire format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest

from aiops.embeddings import (
    EmbeddingError,
    EmbeddingSettings,
    HashingEmbedder,
    OpenAIEmbedder,
    make_embedder,
)
from tests.support.loopback import ThreadedServer


class _FakeOpenAI(ThreadedServer):
    """``POST /v1/embeddings`` answered like the OpenAI API; records each request."""

    def __init__(self, dim: int) -> None:
        super().__init__(_Handler)
        self.dim = dim
        self.requests: list[tuple[dict[str, str], dict]] = []


class _Handler(BaseHTTPRequestHandler):
    server: _FakeOpenAI

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
        if self.path != "/v1/embeddings":
            self.send_error(404)
            return
        data = []
        for i, text in enumerate(body["input"]):
            vec = [0.0] * self.server.dim
            vec[len(text) % self.server.dim] = 3.0
            vec[0] += 4.0
            data.append({"object": "embedding", "index": i, "embedding": vec})
        data.reverse()  # the API does not promise order; the client must sort by index
        payload = json.dumps(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def fake_openai() -> Iterator[_FakeOpenAI]:
    with _FakeOpenAI(dim=384) as server:
        yield server


async def test_hashing_embedder_is_deterministic_normalised_and_similarity_aware() -> None:
    embedder = HashingEmbedder(dim=384)
    texts = [
        "payment service latency p95 grew, cpu contention on payment pod",
        "payment service latency p95 increased, cpu contention on a payment pod",
        "postgres errors after deployment of catalog version 1.5.0",
        "",
    ]
    first = await embedder.embed(texts)
    second = await HashingEmbedder(dim=384).embed(texts)
    assert first.shape == (4, 384) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(np.linalg.norm(first[:3], axis=1), 1.0, rtol=1e-5)
    assert not first[3].any(), "a text without tokens embeds to zero"
    assert first[0] @ first[1] > 0.6
    assert first[0] @ first[1] > first[0] @ first[2] + 0.3


async def test_openai_embedder_speaks_the_embeddings_api(fake_openai: _FakeOpenAI) -> None:
    embedder = OpenAIEmbedder(
        api_key="sk-test",
        model="text-embedding-3-small",
        dim=384,
        base_url=f"http://127.0.0.1:{fake_openai.server_port}/v1",
        batch_size=2,
    )
    try:
        vectors = await embedder.embed(["a", "bb", "ccc"])
    finally:
        await embedder.aclose()
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert [int(np.argmax(v[1:])) + 1 for v in vectors] == [1, 2, 3], "rows follow the input order"
    assert len(fake_openai.requests) == 2, "three texts in batches of two"
    headers, body = fake_openai.requests[0]
    assert headers["authorization"] == "Bearer sk-test"
    assert body == {
        "model": "text-embedding-3-small",
        "input": ["a", "bb"],
        "dimensions": 384,
        "encoding_format": "float",
    }
    assert fake_openai.requests[1][1]["input"] == ["ccc"]


async def test_openai_embedder_refuses_vectors_of_the_wrong_size(fake_openai: _FakeOpenAI) -> None:
    fake_openai.dim = 1536
    embedder = OpenAIEmbedder(
        api_key="sk-test", model="m", dim=384, base_url=f"http://127.0.0.1:{fake_openai.server_port}/v1"
    )
    try:
        with pytest.raises(EmbeddingError, match="embedding dim: .* returned 1536 values, expected 384"):
            await embedder.embed(["x"])
    finally:
        await embedder.aclose()


async def test_make_embedder_picks_openai_only_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert isinstance(make_embedder(EmbeddingSettings()), HashingEmbedder)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    chosen = make_embedder(EmbeddingSettings())
    assert isinstance(chosen, OpenAIEmbedder) and chosen.dim == 384
    await chosen.aclose()


def test_embedding_settings_name_the_bad_field() -> None:
    with pytest.raises(ValueError, match="DEVART_EMBEDDING_DIM"):
        EmbeddingSettings(DEVART_EMBEDDING_DIM=2)
    with pytest.raises(ValueError, match="dim"):
        HashingEmbedder(dim=2)


def test_embedding_dim_must_fit_the_vector_column() -> None:
    assert EmbeddingSettings().dim == 384
    with pytest.raises(ValueError, match="vector\\(384\\)"):
        EmbeddingSettings(DEVART_EMBEDDING_DIM=512)
