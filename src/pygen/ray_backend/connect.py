"""Connecting pygen to a Ray cluster, and telling whether this process is a Ray worker."""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional


def in_ray_worker() -> bool:
    """Whether this process is a Ray worker (without importing Ray if nobody did)."""
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        from ray._private import worker as ray_worker

        return bool(ray_worker.global_worker.mode == ray_worker.WORKER_MODE)
    except Exception:
        return False


def connect(address: str, local_only: Dict[str, Any], *, from_env: bool,
            worker_memory_limit: Optional[int], log_to_driver: bool) -> Any:
    from .runtime import RayRuntime

    return RayRuntime.connect(address, local_only, from_env=from_env,
                              worker_memory_limit=worker_memory_limit,
                              log_to_driver=log_to_driver)
