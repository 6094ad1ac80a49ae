"""A local Telegram Bot API server speaking the real wire format, for python-telegram-bot to talk to.

``POST|GET /bot<token>/<method>`` with a JSON, form-urlencoded or multipart body; answers
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": ..., "description": ...,
"parameters": {...}}`` as Telegram does. It keeps chats and their messages, long-polls
``getUpdates`` (and refuses it while a webhook is set), delivers updates to a webhook with the
secret header, and can be told to answer 429 with ``retry_after``, to refuse a chat, or to hold
its port closed.
"""

from __future__ import annotations

import asyncio
import html
import html.parser
import itertools
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web

from tests.support.loopback import LoopbackServer

BOT = {"id": 777000111, "is_bot": True, "first_name": "devart", "username": "devart_test_bot",
       "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}
_JSON_FIELDS = {"reply_markup", "allowed_updates", "link_preview_options", "reply_parameters", "entities"}
_INT_FIELDS = {"chat_id", "message_id", "message_thread_id", "offset", "limit", "timeout", "cache_time"}
_BOOL_FIELDS = {"disable_notification", "show_alert", "drop_pending_updates", "protect_content"}


class ApiError(Exception):
    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float


@dataclass
class FakeTelegram:
    token: str = "123456:TEST-token"
    chats: dict[int, str] = field(default_factory=dict)
    """chat id -> type (private, group, supergroup); a chat not listed is "chat not found"."""
    blocked: set[int] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    messages: dict[int, dict[int, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    answers: list[dict[str, Any]] = field(default_factory=list)
    webhook: dict[str, Any] | None = None
    _throttles: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    _updates: list[dict[str, Any]] = field(default_factory=list)
    _queries: dict[str, bool] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _update_ids: itertools.count = field(default_factory=lambda: itertools.count(5000))
    _new_update: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False

    # --- what tests do
    def throttle(self, method: str, retry_after: int, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer 429 with ``retry_after``."""
        self._throttles[method] += [retry_after] * times

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def press(self, chat_id: int, message_id: int, data: str, *, user_id: int, username: str | None = "ana",
              update_id: int | None = None, query_id: str | None = None) -> dict[str, Any]:
        """A user pressing an inline button: a ``callback_query`` update, queued for getUpdates."""
        message = self.messages[chat_id][message_id]
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": (username or "Anon").title()}
        if username:
            user["username"] = username
        query_id = query_id or str(next(self._ids) * 1_000_003)
        self._queries.setdefault(query_id, False)
        update = {"update_id": update_id if update_id is not None else next(self._update_ids),
                  "callback_query": {"id": query_id, "from": user, "message": message,
                                     "chat_instance": f"ci{chat_id}", "data": data}}
        self._updates.append(update)
        self._new_update.set()
        return update

    def redeliver(self, update: dict[str, Any]) -> None:
        """Queue an update again, its callback query answerable again (Telegram retrying it)."""
        self._queries[update["callback_query"]["id"]] = False
        self._updates.append(update)
        self._new_update.set()

    def last_text(self, chat_id: int) -> str:
        return list(self.messages[chat_id].values())[-1]["text"]

    async def push_to_webhook(self, update: dict[str, Any], *, secret: str | None = "use-configured") -> httpx.Response:
        """POST an update to the registered webhook, as Telegram does (with the secret header)."""
        assert self.webhook is not None, "no webhook set"
        headers = {}
        token = self.webhook.get("secret_token") if secret == "use-configured" else secret
        if token is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = token
        async with httpx.AsyncClient() as client:
            return await client.post(self.webhook["url"], json=update, headers=headers)

    async def end_long_polls(self, _: web.Application) -> None:
        """The server is stopping: a pending ``getUpdates`` answers now, so the server's shutdown need
        not wait for its timeout."""
        self._stopping = True
        self._new_update.set()

    # --- the Bot API
    async def handle(self, request: web.Request) -> web.Response:
        token, method = request.match_info["token"], request.match_info["method"]
        params = await _params(request)
        self.calls.append(Call(method, params, time.monotonic()))
        try:
            if token != self.token:
                raise ApiError(401, "Unauthorized")
            if self._throttles.get(method):
                retry = self._throttles[method].pop(0)
                raise ApiError(429, f"Too Many Requests: retry after {retry}", {"retry_after": retry})
            handler = getattr(self, f"_m_{method.lower()}", None)
            if handler is None:
                raise ApiError(404, "Not Found")
            result = await handler(params)
        except ApiError as exc:
            body: dict[str, Any] = {"ok": False, "error_code": exc.code, "description": exc.description}
            if exc.parameters:
                body["parameters"] = exc.parameters
            return web.json_response(body, status=exc.code)
        return web.json_response({"ok": True, "result": result})

    async def _m_getme(self, _: dict[str, Any]) -> dict[str, Any]:
        return BOT

    async def _m_sendmessage(self, p: dict[str, Any]) -> dict[str, Any]:
        chat_id = p["chat_id"]
        self._chat(chat_id)
        text = _visible(p.get("text", ""), p.get("parse_mode"))
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        message_id = next(self._ids)
        message = self._message(chat_id, message_id, text, p.get("reply_markup"))
        if p.get("message_thread_id"):
            message["message_thread_id"] = p["message_thread_id"]
        message["_silent"] = bool(p.get("disable_notification"))
        self.messages[chat_id][message_id] = message
        return _public(message)

    async def _m_editmessagetext(self, p: dict[str, Any]) -> dict[str, Any]:
        message = self._existing(p)
        text = _visible(p.get("text", ""), p.get("parse_mode"))
        if len(text.encode("utf-16-le")) // 2 > 4096:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        return self._edit(message, text, p.get("reply_markup"))

    async def _m_editmessagereplymarkup(self, p: dict[str, Any]) -> dict[str, Any]:
        message = self._existing(p)
        return self._edit(message, message["text"], p.get("reply_markup"))

    async def _m_answercallbackquery(self, p: dict[str, Any]) -> bool:
        query_id = str(p["callback_query_id"])
        if self._queries.get(query_id, True):
            raise ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        self._queries[query_id] = True
        self.answers.append({"callback_query_id": query_id, "text": p.get("text"),
                             "show_alert": bool(p.get("show_alert"))})
        return True

    async def _m_getupdates(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                "use deleteWebhook to delete the webhook first")
        offset = p.get("offset") or 0
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = time.monotonic() + float(p.get("timeout") or 0)
        while not self._updates and not self._stopping and time.monotonic() < deadline:
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), timeout=deadline - time.monotonic())
            except TimeoutError:
                break
        return list(self._updates[: p.get("limit") or 100])

    async def _m_setwebhook(self, p: dict[str, Any]) -> bool:
        if not str(p.get("url", "")).startswith(("http://", "https://")):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        self.webhook = p
        return True

    async def _m_deletewebhook(self, _: dict[str, Any]) -> bool:
        self.webhook = None
        return True

    def _chat(self, chat_id: int) -> str:
        if chat_id in self.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        if chat_id not in self.chats:
            raise ApiError(400, "Bad Request: chat not found")
        return self.chats[chat_id]

    def _existing(self, p: dict[str, Any]) -> dict[str, Any]:
        self._chat(p["chat_id"])
        message = self.messages[p["chat_id"]].get(p.get("message_id"))
        if message is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        return message

    def _edit(self, message: dict[str, Any], text: str, markup: dict[str, Any] | None) -> dict[str, Any]:
        if message["text"] == text and message.get("reply_markup") == _markup(markup):
            raise ApiError(400, "Bad Request: message is not modified: specified new message content and reply "
                                "markup are exactly the same as a current content and reply markup of the message")
        message["text"] = text
        message["edit_date"] = int(time.time())
        if _markup(markup) is None:
            message.pop("reply_markup", None)
        else:
            message["reply_markup"] = _markup(markup)
        return _public(message)

    def _message(self, chat_id: int, message_id: int, text: str, markup: dict[str, Any] | None) -> dict[str, Any]:
        kind = self.chats[chat_id]
        chat: dict[str, Any] = {"id": chat_id, "type": kind}
        chat.update({"first_name": "Ana"} if kind == "private" else {"title": f"chat {chat_id}"})
        message: dict[str, Any] = {"message_id": message_id, "from": BOT, "chat": chat, "date": int(time.time()),
                                   "text": text}
        if _markup(markup) is not None:
            message["reply_markup"] = _markup(markup)
        return message


def _markup(markup: dict[str, Any] | None) -> dict[str, Any] | None:
    """Telegram drops an empty keyboard."""
    if not markup or not markup.get("inline_keyboard"):
        return None
    return markup


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if not k.startswith("_")}


class _Html(html.parser.HTMLParser):
    ALLOWED = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre", "tg-spoiler",
               "span", "blockquote", "tg-emoji"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.ALLOWED:
            raise ApiError(400, f"Bad Request: can't parse entities: Unsupported start tag \"{tag}\"")
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            raise ApiError(400, f"Bad Request: can't parse entities: Unmatched end tag \"{tag}\"")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _visible(text: str, parse_mode: str | None) -> str:
    """The message text as Telegram stores it: entities parsed out of HTML, or as sent."""
    if parse_mode != "HTML":
        return text
    parser = _Html()
    parser.feed(text)
    parser.close()
    if parser.open:
        raise ApiError(400, f"Bad Request: can't parse entities: Can't find end tag corresponding to start tag "
                            f"\"{parser.open[-1]}\"")
    return "".join(parser.text)


async def _params(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        raw: dict[str, Any] = await request.json()
        return raw
    raw_form = dict(request.query)
    if request.can_read_body:
        raw_form.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    params: dict[str, Any] = {}
    for key, value in raw_form.items():
        if key in _JSON_FIELDS:
            params[key] = json.loads(value)
        elif key in _INT_FIELDS:
            params[key] = int(value)
        elif key in _BOOL_FIELDS:
            params[key] = value.lower() == "true"
        else:
            params[key] = value
    return params


class FakeTelegramServer(LoopbackServer):
    """Runs a :class:`FakeTelegram` on a loopback port (``port`` 0: a free one); ``url`` is what
    DEVART_TELEGRAM_API_URL gets."""

    def __init__(self, fake: FakeTelegram, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", fake.handle)
        app.on_shutdown.append(fake.end_long_polls)
        super().__init__(app, port)
        self.fake = fake
