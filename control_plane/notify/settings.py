"""Typed settings of the notification channels: Telegram (``DEVART_TELEGRAM_``) and outgoing webhooks
(``DEVART_NOTIFY_``). Nothing configured means notifications are only logged."""

from __future__ import annotations

import fnmatch
import re
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from control_plane.approvals import RISKS, Risk


class TelegramChat(BaseModel):
    """One chat the bot posts to."""

    chat_id: int = Field(description="the chat's id (negative for groups and channels)")
    min_severity: float = Field(
        default=0.0, ge=0, le=1, description="incidents below this severity are posted quietly (no sound)"
    )
    message_thread_id: int | None = Field(default=None, ge=1, description="forum topic to post in")


class TelegramSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_TELEGRAM_", extra="ignore")

    bot_token: SecretStr | None = Field(
        default=None, description="the bot's token from BotFather; unset = Telegram off (notifications are logged)"
    )
    api_url: str = Field(
        default="https://api.telegram.org",
        description="Bot API base URL (tests and self-hosted Bot API servers point it elsewhere)",
    )
    chats: list[TelegramChat] = Field(
        default_factory=list,
        description='JSON list of chats: [{"chat_id": -100123, "min_severity": 0.5, "message_thread_id": 7}]',
    )
    approvers: dict[int, str] = Field(
        default_factory=dict,
        description='JSON object Telegram user id -> devart principal (token name): {"123456": "alice"}; '
        "the principal's role decides what the user may do",
    )
    mode: Literal["polling", "webhook"] = Field(
        default="polling", description="how button presses arrive: long polling (no public URL) or a webhook"
    )
    webhook_url: str | None = Field(
        default=None, description="public URL of POST /api/v1/telegram/webhook, registered with setWebhook"
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="secret Telegram sends in X-Telegram-Bot-Api-Secret-Token (1-256 of A-Z a-z 0-9 _ -)",
    )
    chat_max_risk: Risk = Field(
        default="medium", description="highest approval risk that may be decided from the chat"
    )
    callback_ttl_s: float = Field(
        default=24 * 3600.0, gt=0, description="how long a button stays usable (capped by the approval's expiry)"
    )
    digest_window_s: float = Field(
        default=60.0, ge=0, description="incidents opened in one chat within this window can share a digest message"
    )
    digest_after: int = Field(
        default=3, ge=1, description="incident messages in a chat within the window before new ones join a digest"
    )
    poll_timeout_s: int = Field(default=30, ge=0, le=50, description="long-polling timeout of getUpdates")
    per_chat_per_s: float = Field(default=1.0, gt=0, description="most messages per second to one chat")
    per_group_per_min: int = Field(default=20, ge=1, description="most messages per minute to one group")
    global_per_s: int = Field(default=30, ge=1, description="most messages per second overall")
    retry_s: float = Field(default=2.0, gt=0, description="delay before retrying a send that failed on the network")
    request_timeout_s: float = Field(default=10.0, gt=0, description="timeout of one Bot API call")

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None and bool(self.chats)

    @field_validator("webhook_secret")
    @classmethod
    def _secret_alphabet(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @model_validator(mode="after")
    def _check(self) -> TelegramSettings:
        if self.mode == "webhook" and (self.webhook_secret is None or not self.webhook_url):
            raise ValueError("webhook mode needs DEVART_TELEGRAM_WEBHOOK_URL and DEVART_TELEGRAM_WEBHOOK_SECRET")
        return self

    def may_decide_in_chat(self, risk: str) -> bool:
        return risk in RISKS and RISKS.index(risk) <= RISKS.index(self.chat_max_risk)  # type: ignore[arg-type]


class Webhook(BaseModel):
    """One receiver of signed JSON events."""

    url: str = Field(pattern=r"^https?://", description="where events are POSTed")
    secret: SecretStr = Field(min_length=16, description="HMAC-SHA256 key of X-Devart-Signature-256")
    events: list[str] = Field(default=["*"], min_length=1, description="event names or globs: incident.*, approval.*")
    name: str = Field(default="", max_length=100, description="label in logs and the delivery list (default: URL)")

    def wants(self, event: str) -> bool:
        return any(fnmatch.fnmatchcase(event, pattern) for pattern in self.events)

    @property
    def label(self) -> str:
        return self.name or self.url


class NotifySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_NOTIFY_", extra="ignore")

    webhooks: list[Webhook] = Field(
        default_factory=list,
        description='JSON list: [{"url": "https://...", "secret": "...", "events": ["incident.*"]}]',
    )
    console_url: str | None = Field(
        default=None, description="base URL of the console, for links in notifications; unset = no links"
    )
    scan_interval_s: float = Field(default=2.0, gt=0, description="period of the scan for incident and approval changes")
    lookback_s: float = Field(
        default=24 * 3600.0, gt=0, description="incidents and approvals created longer ago than this are never notified"
    )
    webhook_max_attempts: int = Field(default=8, ge=1, description="attempts of one webhook delivery before it fails")
    webhook_backoff_s: float = Field(default=1.0, gt=0, description="first retry delay of a webhook delivery (doubles)")
    webhook_backoff_cap_s: float = Field(default=300.0, gt=0, description="longest retry delay of a webhook delivery")
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="timeout of one webhook POST")

    telegram: TelegramSettings = Field(default_factory=TelegramSettings)

    @field_validator("webhooks")
    @classmethod
    def _unique(cls, value: list[Webhook]) -> list[Webhook]:
        labels = [w.label for w in value]
        if len(set(labels)) != len(labels):
            raise ValueError("two webhooks share a name (or URL); give each a distinct name")
        return value
