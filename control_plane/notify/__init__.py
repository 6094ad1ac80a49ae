"""Notifications: incident and approval changes told to Telegram chats and signed outgoing webhooks."""

from control_plane.notify.service import Notifications
from control_plane.notify.settings import NotifySettings, TelegramChat, TelegramSettings, Webhook

__all__ = ["Notifications", "NotifySettings", "TelegramChat", "TelegramSettings", "Webhook"]
