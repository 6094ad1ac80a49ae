-- A silence pressed in Telegram is created by the notifier's poller (devart_service), after it has
-- checked the pressing approver's role (control_plane/notify/telegram_callbacks.py).
GRANT INSERT ON incident_silences TO devart_service;
CREATE POLICY incident_silences_service_insert ON incident_silences FOR INSERT TO devart_service WITH CHECK (true);
