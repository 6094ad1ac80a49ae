"""Service names from pod and host names: one logical service per Deployment/StatefulSet/host."""

from __future__ import annotations

import re

# Kubernetes generates pod and ReplicaSet suffixes from an alphabet without vowels and without 0, 1, 3
# (k8s.io/apimachinery rand.SafeEncodeString), which keeps words like "-items" from matching.
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
_DEPLOYMENT_POD = re.compile(rf"^(?P<base>.+?)-{_SAFE}{{6,10}}-{_SAFE}{{5}}$")
_BARE_SUFFIX = re.compile(rf"^(?P<base>.+?)-(?=[a-z0-9]*[2456789])({_SAFE}{{5}}|{_SAFE}{{6,10}})$")
_ORDINAL = re.compile(r"^(?P<base>.+?)-\d{1,4}$")
_DOMAIN_SUFFIXES = (".local", ".internal", ".com", ".net", ".org", ".io", ".svc", ".cluster")


def normalise_service(name: str) -> str:
    """``cart-7d9f8b6c5d-x2k4q`` -> ``cart``; ``postgres-0`` -> ``postgres``;
    ``cart.shop.svc.cluster.local`` -> ``cart``; anything else is returned stripped of whitespace."""
    name = name.strip()
    if not name:
        return name
    lowered = name.lower()
    if "." in name and (lowered.count(".") >= 2 or lowered.endswith(_DOMAIN_SUFFIXES)):
        name = name.split(".", 1)[0]
    for pattern in (_DEPLOYMENT_POD, _BARE_SUFFIX, _ORDINAL):
        match = pattern.match(name)
        if match:
            return match.group("base")
    return name
