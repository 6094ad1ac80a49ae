"""Service names from pod, StatefulSet and host names."""

from __future__ import annotations

import pytest

from aiops.rca import normalise_service


@pytest.mark.parametrize(
    ("raw", "service"),
    [
        ("cart-7d9f8b6c5d-x2k4q", "cart"),
        ("checkoutservice-5b7f9c8d4-zqlwp", "checkoutservice"),
        ("ts-order-service-6c9b8d7f45-2wxkz", "ts-order-service"),
        ("frontend-x2k4q", "frontend"),
        ("postgres-0", "postgres"),
        ("kafka-12", "kafka"),
        ("cart.shop.svc.cluster.local", "cart"),
        ("api.example.com", "api"),
        ("  payment  ", "payment"),
        ("frontend", "frontend"),
        ("order-items", "order-items"),
        ("redis-cache", "redis-cache"),
        ("ts-order-service-7d8b5c6f9-abcde", "ts-order-service-7d8b5c6f9-abcde"),
        ("svc0", "svc0"),
        ("devart.control", "devart.control"),
    ],
)
def test_normalise_service(raw: str, service: str) -> None:
    assert normalise_service(raw) == service
