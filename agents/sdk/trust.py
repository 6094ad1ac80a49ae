"""Who may say what on the broker: signed task messages and signed agent events.

Anyone who can publish to the broker could otherwise forge a ``succeeded`` event for any task, or
a task message for any pool. So:

* The control plane signs every message it sends to agents (task messages, retries, control
  commands) with its Ed25519 key, in the ``x-devart-signature`` header over the exact body. Agents
  hold only the public key: they can verify, not forge. A task message or command without a valid
  signature is dead-lettered (tasks) or dropped (commands) with the reason.
* Each agent registers over HTTP with its ``agent`` API token and receives its own event key
  (32 random bytes, bound to its agent id, its pool and the token). It signs every event with HMAC-SHA256 in the
  same header; the control plane verifies it against the key of the agent the event names, so an
  event claiming to be agent A's is accepted only from the holder of A's key.
* Each task message carries its attempt's *delivery secret* in the ``x-devart-delivery-secret``
  header, and every event an agent sends about that attempt carries a *proof of delivery*: the
  MAC (keyed BLAKE2b) of its own agent id under that secret. Only an agent the broker delivered the message
  to can make it, so an agent cannot speak for an attempt delivered to another agent of its pool,
  or for one still queued; and a proof read off the events queue is worth nothing under another
  agent's key.

This module is the wire half of that contract; it imports nothing of the control plane.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

import httpx
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field

HEADER_SIGNATURE = "x-devart-signature"
HEADER_DELIVERY_SECRET = "x-devart-delivery-secret"
REGISTER_PATH = "/api/v1/agents/register"


class AgentCredentials(BaseModel):
    """What an agent needs to take part: its event key and the control plane's public key."""

    model_config = ConfigDict(frozen=True)
    agent_id: str
    event_key: bytes = Field(repr=False, description="HMAC-SHA256 key of this agent's events")
    control_plane_key: bytes = Field(description="raw Ed25519 public key that signs task messages")

    def sign_event(self, body: bytes) -> str:
        return sign_event(self.event_key, body)

    def verify_from_control_plane(self, body: bytes, signature: object) -> str | None:
        """None when ``signature`` is the control plane's over ``body``, else why not."""
        return verify_signed(self.control_plane_key, body, signature)


def sign_event(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def event_signature_valid(key: bytes, body: bytes, signature: object) -> bool:
    if isinstance(signature, bytes):
        signature = signature.decode("ascii", "replace")
    return isinstance(signature, str) and hmac.compare_digest(sign_event(key, body), signature)


def delivery_proof(secret: bytes, agent_id: str) -> str:
    """The proof of delivery ``agent_id`` puts in its events about the attempt whose task message
    carried ``secret``: keyed BLAKE2b, a MAC by design, in one call (half an HMAC-SHA256's cost)."""
    return hashlib.blake2b(agent_id.encode(), key=secret, digest_size=32).hexdigest()


def delivery_secret(header: object) -> bytes | None:
    """The delivery secret a task message's ``x-devart-delivery-secret`` header carries (urlsafe
    base64 of 32 bytes), or None when it carries none."""
    if isinstance(header, str):
        header = header.encode("ascii", "replace")
    if not isinstance(header, bytes):
        return None
    try:
        secret = base64.urlsafe_b64decode(header)
    except ValueError:
        return None
    return secret if len(secret) == 32 else None


class MessageSigner:
    """The control plane's side: signs with the private key (never leaves the control plane)."""

    def __init__(self, private_key: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(private_key)
        self.public_key = self._key.public_key().public_bytes_raw()

    @staticmethod
    def generate() -> bytes:
        """A new raw private key."""
        return Ed25519PrivateKey.generate().private_bytes_raw()

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self._key.sign(body)).decode()


@functools.lru_cache(maxsize=8)
def _public_key(raw: bytes) -> nacl.signing.VerifyKey:
    """The key object of a raw public key, loaded once per key rather than once per message.

    Verifying goes through libsodium (PyNaCl): it checks the same Ed25519 signatures as OpenSSL
    (``cryptography``, which signs them) in about half the time, and an agent verifies every task
    message it takes.
    """
    return nacl.signing.VerifyKey(raw)


def verify_signed(public_key: bytes, body: bytes, signature: object) -> str | None:
    """None when ``signature`` (base64 Ed25519) is valid for ``body``, else the reason it is not."""
    if isinstance(signature, bytes):
        signature = signature.decode("ascii", "replace")
    if not isinstance(signature, str) or not signature:
        return "unsigned: not published by the control plane"
    try:
        _public_key(public_key).verify(body, base64.b64decode(signature, validate=True))
    except (nacl.exceptions.CryptoError, ValueError):
        return "forged: the signature is not the control plane's"
    return None


async def register(
    api_url: str, token: str, agent_id: str, pool_id: str, *, timeout_s: float = 10.0
) -> AgentCredentials:
    """Register ``agent_id`` of ``pool_id`` with the control plane using an ``agent`` token (one
    scoped to that pool, or unscoped outside production); returns its keys."""
    async with httpx.AsyncClient(base_url=api_url.rstrip("/"), timeout=timeout_s) as client:
        response = await client.post(REGISTER_PATH, json={"agent_id": agent_id, "pool_id": pool_id},
                                     headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        raise RuntimeError(f"agent registration at {api_url} failed: {response.status_code} {response.text[:300]}")
    body = response.json()
    return AgentCredentials(agent_id=agent_id, event_key=base64.b64decode(body["event_key"]),
                            control_plane_key=base64.b64decode(body["control_plane_key"]))
