"""The seam under the public API: what a runtime must do, in values and handles.

    pygen.api, ObjectRef, ObjectRefGenerator, ActorHandle, RemoteFunction, ActorClass
                                  |
                          Runtime (this protocol)
                 /                                      \\
    core.local_runtime.LocalRuntime            ray_backend.RayRuntime
    (this machine: the node, the C store)      (a Ray cluster, through Ray's public API)

Everything in the public face talks to the runtime of its process through these
methods, and only these.  They take and give the face's own objects -- refs, generators,
actor handles, Python values -- never wire forms: the local runtime speaks 20-byte ids
and encoded payloads to its node underneath, Ray speaks its own, and neither leaks up.

An object made by a runtime remembers it (``ObjectRef._client``, and the generators and
handles through their refs): ``get`` of a ref asks the ref's runtime.  ``context`` holds
the runtime of this process (set by ``init``, or in a worker at start-up).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

try:
    from typing import Protocol
except ImportError:  # Python < 3.8
    Protocol = object  # type: ignore

if TYPE_CHECKING:
    import concurrent.futures

    from .actor import ActorClass, ActorHandle, ActorMethod
    from .generators import ObjectRefGenerator
    from .object_ref import ObjectRef
    from .remote_function import RemoteFunction


class Runtime(Protocol):
    """A runtime of pygen: local, or over a Ray cluster."""

    backend: str          # "local" or "ray": for messages ("... on the ray backend")
    is_worker: bool       # this process runs tasks (init() is a no-op here)
    closed: bool
    forked: bool          # a forked child's copy of its parent's runtime: never usable

    # reference counting of the refs this runtime made (no-ops where the backend counts)
    def add_ref(self, oid: bytes, registered: bool = False) -> None: ...
    def remove_ref(self, oid: bytes) -> None: ...

    # objects
    def put(self, value: Any) -> "ObjectRef[Any]": ...
    def get(self, refs: Sequence["ObjectRef[Any]"], timeout: Optional[float]) -> List[Any]: ...
    def wait(self, items: Sequence[Any], num_returns: int,
             timeout: Optional[float]) -> List[bool]:
        """Ready flags of refs and streaming generators (ready: ``next`` would not block)."""
        ...

    def future(self, ref: "ObjectRef[Any]") -> "concurrent.futures.Future[Any]": ...
    def cancel(self, item: Any, force: bool, recursive: bool) -> None: ...

    # tasks and actors: what .remote() returns
    def submit_task(self, fn: "RemoteFunction[Any, Any]", args: tuple,
                    kwargs: Dict[str, Any]) -> Any: ...
    def create_actor(self, cls: "ActorClass", args: tuple,
                     kwargs: Dict[str, Any]) -> "ActorHandle": ...
    def call_method(self, method: "ActorMethod", args: tuple, kwargs: Dict[str, Any]) -> Any: ...
    def get_actor(self, name: str) -> Optional["ActorHandle"]: ...
    def kill_actor(self, handle: "ActorHandle", no_restart: bool) -> None:
        """Returns once the actor's process is gone."""
        ...

    # streaming generators
    def stream_next(self, gen: "ObjectRefGenerator[Any]",
                    timeout: Optional[float]) -> Optional["ObjectRef[Any]"]:
        """The next item's ref, None at the end; GetTimeoutError after ``timeout``."""
        ...

    async def stream_anext(self, gen: "ObjectRefGenerator[Any]") -> Optional["ObjectRef[Any]"]: ...
    def stream_close(self, gen: "ObjectRefGenerator[Any]") -> None: ...
    def stream_completed(self, gen: "ObjectRefGenerator[Any]") -> "ObjectRef[Any]": ...

    # the whole runtime
    def shutdown(self) -> None: ...
    def list_tasks(self) -> List[Dict[str, Any]]: ...
    def list_objects(self) -> List[Dict[str, Any]]: ...
    def list_actors(self) -> List[Dict[str, Any]]: ...
    def store_stats(self) -> Dict[str, Any]: ...


def not_on(backend: str, feature: str, why: str = "") -> NotImplementedError:
    """The error for a feature a backend cannot provide (never a silent difference)."""
    text = f"{feature} is not available on the {backend} backend"
    return NotImplementedError(text + (f": {why}" if why else ""))
