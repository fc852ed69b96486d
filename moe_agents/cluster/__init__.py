"""moe-agents on a Ray cluster (the ``ray`` extra): backends as Ray Serve deployments, the
permission function choosing replicas, and one trust store for the cluster.

``RayConfig`` and ``Placement`` (the YAML ``ray:`` section and a backend's ``placement:``) import
no Ray; a pipeline without ``ray:`` never imports it.
"""

from __future__ import annotations

from .settings import Placement, RayConfig

__all__ = ["Placement", "RayConfig"]
