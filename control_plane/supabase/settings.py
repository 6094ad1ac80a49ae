"""Settings of the Supabase integration (``DEVART_SUPABASE_`` prefix); docs/supabase.md explains each."""

from __future__ import annotations

from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class SupabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_SUPABASE_", extra="ignore")

    url: str | None = Field(
        default=None,
        description="the Supabase project URL (https://<ref>.supabase.co); `devart supabase` commands call its Auth API",
    )
    anon_key: str | None = Field(
        default=None,
        description="the project's anon (publishable) key, for `devart supabase sign-in` (public: browsers hold it)",
    )
    service_role_key: SecretStr | None = Field(
        default=None,
        description="the project's service_role key, for `devart supabase` commands only (the API never reads it); "
        "it bypasses row-level security: keep it off the API's machines",
    )
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="the project's JWT secret: the API accepts Supabase access tokens signed with it (HS256); "
        "unset = HS256 tokens are refused",
    )
    jwks_url: str | None = Field(
        default=None,
        description="the project's JWKS (<url>/auth/v1/.well-known/jwks.json): the API accepts access tokens signed "
        "with its RS256/ES256 keys; unset = asymmetric tokens are refused",
    )
    jwt_audience: str = Field(
        default="authenticated", min_length=1, description="the aud a Supabase access token must carry"
    )
    jwt_issuer: str | None = Field(
        default=None,
        description="the iss a Supabase access token must carry (<url>/auth/v1); unset = not checked",
    )
    jwt_leeway_s: float = Field(
        default=10.0, ge=0, le=300, description="clock skew allowed when checking a token's exp and nbf"
    )
    jwks_cache_s: float = Field(
        default=600.0, gt=0, description="how long the JWKS is used before it is fetched again"
    )
    jwks_refresh_min_s: float = Field(
        default=30.0, ge=0,
        description="a token naming a key id the JWKS lacks fetches it again at most this often (key rotation "
        "without letting made-up key ids hammer Supabase)",
    )
    jwks_timeout_s: float = Field(default=5.0, gt=0, description="timeout of one JWKS fetch")

    @field_validator("url", "jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"must be an http(s) URL, not {value!r}")
        if parsed.scheme == "http" and parsed.hostname not in _LOOPBACK:
            raise ValueError("must be https (plain http only to a loopback address)")
        return value.rstrip("/")

    @property
    def accepts_tokens(self) -> bool:
        """Whether the API takes Supabase access tokens as bearer tokens."""
        return self.jwt_secret is not None or self.jwks_url is not None
