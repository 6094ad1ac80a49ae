"""A fake Kubernetes API server speaking the real wire format, for tests of the Kubernetes sandbox."""

from tests.k8s_fake.cluster import FakeKubernetes

__all__ = ["FakeKubernetes"]
