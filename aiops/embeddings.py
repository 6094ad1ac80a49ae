"""Text embeddings for incident memory: a deterministic local embedder and OpenAI embeddings.

Both return L2-normalised float32 rows of a fixed dimension, so cosine similarity is a dot product
and vectors from either fit the ``vector(384)`` column of ``rca_memory``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections import Counter
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from openai import AsyncOpenAI

_WORD = re.compile(r"[a-z0-9_]+")

STORED_DIM = 384
"""The dimension of the ``vector(384)`` columns (``rca_memory``, ``rca_results``); another needs a migration."""


class EmbeddingError(RuntimeError):
    """The embedding backend answered with something unusable (wrong size, missing rows)."""


class EmbeddingSettings(BaseSettings):
    """Which embedder to use; OpenAI when ``OPENAI_API_KEY`` is set, the local one otherwise."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias="OPENAI_API_KEY",
        description="OpenAI (or compatible) API key; unset = local embedder.",
    )
    openai_base_url: str | None = Field(
        None, validation_alias="OPENAI_BASE_URL", description="Base URL of an OpenAI-compatible server."
    )
    model: str = Field(
        "text-embedding-3-small",
        validation_alias="DEVART_EMBEDDING_MODEL",
        description="Embedding model name on the OpenAI-compatible server.",
    )
    dim: int = Field(
        STORED_DIM, validation_alias="DEVART_EMBEDDING_DIM",
        description="Vector dimension; must be 384, the dimension of the vector(384) columns that store them.",
    )
    batch_size: int = Field(
        64,
        ge=1,
        le=2048,
        validation_alias="DEVART_EMBEDDING_BATCH",
        description="Texts per embeddings request.",
    )
    max_chars: int = Field(
        8000,
        ge=1,
        validation_alias="DEVART_EMBEDDING_MAX_CHARS",
        description="Texts are cut to this many characters.",
    )
    timeout_s: float = Field(
        30.0,
        gt=0,
        validation_alias="DEVART_EMBEDDING_TIMEOUT_S",
        description="Timeout of one embeddings request.",
    )

    @field_validator("dim")
    @classmethod
    def _stored_dim(cls, value: int) -> int:
        if value != STORED_DIM:
            raise ValueError(f"must be {STORED_DIM}: embeddings are stored in vector({STORED_DIM}) columns")
        return value


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into an ``(n, dim)`` array of L2-normalised rows."""

    dim: int

    async def embed(self, texts: list[str]) -> np.ndarray: ...


def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class HashingEmbedder:
    """Feature hashing of word unigrams, word bigrams and character trigrams, hashed with blake2b
    (stable across processes, unlike ``hash()``), each with a hashed sign, weighted by log-frequency.
    A text without any token embeds to the zero vector."""

    def __init__(self, dim: int = 384) -> None:
        if dim < 8:
            raise ValueError(f"dim: must be at least 8, got {dim}")
        self.dim = dim

    def _features(self, text: str) -> Counter[str]:
        words = _WORD.findall(text.lower())
        features: Counter[str] = Counter(f"w:{w}" for w in words)
        features.update(f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False))
        for w in words:
            padded = f"#{w}#"
            features.update(f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2))
        return features

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        """The embedding, computed in the calling thread."""
        out = np.zeros((len(texts), self.dim), np.float64)
        for row, text in enumerate(texts):
            for feature, count in self._features(text).items():
                digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
                sign = 1.0 if digest >> 63 else -1.0
                out[row, digest % self.dim] += sign * (1.0 + math.log(count))
        return _normalise(out)

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embed_sync, texts)


class OpenAIEmbedder:
    """Embeddings from the OpenAI API (or a compatible server) through the official client, in
    batches, asking for ``dim`` dimensions and refusing answers of another size."""

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        dim: int = 384,
        base_url: str | None = None,
        batch_size: int = 64,
        max_chars: int = 8000,
        timeout_s: float = 30.0,
    ) -> None:
        self.dim = dim
        self._model = model
        self._batch_size = batch_size
        self._max_chars = max_chars
        from openai import AsyncOpenAI  # only here: the local embedder needs no openai package

        self._client: AsyncOpenAI = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s)

    async def embed(self, texts: list[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for first in range(0, len(texts), self._batch_size):
            batch = [t[: self._max_chars] or " " for t in texts[first : first + self._batch_size]]
            response = await self._client.embeddings.create(
                model=self._model, input=batch, dimensions=self.dim, encoding_format="float"
            )
            data = sorted(response.data, key=lambda d: d.index)
            if len(data) != len(batch):
                raise EmbeddingError(f"embeddings: asked for {len(batch)} vectors, got {len(data)}")
            for item in data:
                if len(item.embedding) != self.dim:
                    raise EmbeddingError(
                        f"embedding dim: model {self._model!r} returned {len(item.embedding)} values, expected {self.dim}"
                    )
                rows.append(item.embedding)
        return _normalise(np.array(rows, np.float64).reshape(len(rows), self.dim))

    async def aclose(self) -> None:
        await self._client.close()


def make_embedder(settings: EmbeddingSettings | None = None) -> HashingEmbedder | OpenAIEmbedder:
    """OpenAI embeddings when an API key is configured, the local hashing embedder otherwise."""
    settings = settings or EmbeddingSettings()
    if settings.openai_api_key is not None and settings.openai_api_key.get_secret_value():
        return OpenAIEmbedder(
            api_key=settings.openai_api_key.get_secret_value(),
            model=settings.model,
            dim=settings.dim,
            base_url=settings.openai_base_url,
            batch_size=settings.batch_size,
            max_chars=settings.max_chars,
            timeout_s=settings.timeout_s,
        )
    return HashingEmbedder(settings.dim)
