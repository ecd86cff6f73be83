"""The local runtime: the value-level seam (``pygen.runtime.Runtime``) over this machine's
node and object store.

    face (refs, generators, handles, values)
        | LocalRuntime: encode arguments into a TaskSpec, make refs from ids
    Client (DriverClient: the in-process node; WorkerClient: messages to it)
        | 20-byte ids, encoded payloads, protocol messages
    node, workers, the C store

One per process: in the driver over its ``DriverClient`` (made by ``init``), in a worker
over its ``WorkerClient``.  The refs it makes are counted by the client underneath:
``add_ref``/``remove_ref`` are the client's own bound methods (the hot path goes
straight there).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from .. import ids, options
from ..exceptions import GetTimeoutError
from ..generators import ObjectRefGenerator
from ..object_ref import ObjectRef
from ..task_spec import TaskSpec, encode_args
from . import protocol

if TYPE_CHECKING:
    import concurrent.futures

    from ..actor import ActorClass, ActorHandle, ActorMethod
    from ..remote_function import RemoteFunction


class LocalRuntime:
    backend = "local"

    def __init__(self, client: Any) -> None:
        self.client = client
        self.is_worker = client.is_worker
        self.add_ref = client.add_ref
        self.remove_ref = client.remove_ref

    # the client's state is the runtime's (a fork marks it, shutdown closes it)
    @property
    def closed(self) -> bool:
        return self.client.closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self.client.closed = value

    @property
    def forked(self) -> bool:
        return self.client.forked

    @forked.setter
    def forked(self, value: bool) -> None:
        self.client.forked = value

    @property
    def node(self) -> Any:
        """The in-process node (the driver only)."""
        return self.client.node

    @property
    def store(self) -> Any:
        return self.client.store

    def _ref(self, oid: bytes) -> "ObjectRef[Any]":
        return ObjectRef._registered_with(oid, self)

    def _outputs(self, spec: TaskSpec) -> Any:
        """What ``.remote()`` returns for ``spec``, once submitted."""
        if spec.returns_kind == protocol.RETURNS_STREAMING:
            return ObjectRefGenerator(spec.task_id, _registered=True)
        if spec.returns_kind == protocol.RETURNS_DYNAMIC or spec.num_returns == 1:
            return self._ref(ids.return_id(spec.task_id, 0))
        refs = [self._ref(oid) for oid in spec.return_ids()]
        return refs if refs else None

    # -- objects -------------------------------------------------------------------------
    def put(self, value: Any) -> "ObjectRef[Any]":
        return self._ref(self.client.put(value))

    def get(self, refs: Sequence["ObjectRef[Any]"], timeout: Optional[float]) -> List[Any]:
        return self.client.get([r._id for r in refs], timeout)

    def wait(self, items: Sequence[Any], num_returns: int,
             timeout: Optional[float]) -> List[bool]:
        keys = [item._stream_key() if isinstance(item, ObjectRefGenerator) else item._id
                for item in items]
        if len(set(keys)) != len(keys):
            raise ValueError("pygen.wait() got the same ref more than once")
        return self.client.wait(keys, num_returns, timeout)

    def future(self, ref: "ObjectRef[Any]") -> "concurrent.futures.Future[Any]":
        import concurrent.futures  # not at import time: workers start faster without it

        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        client = self.client
        oid = ref._id
        keep: Optional[ObjectRef[Any]] = ref  # the ref (hence the object) lives till then

        def resolve() -> None:
            nonlocal keep
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(client.get([oid], 0)[0])
                except BaseException as exc:  # the stored error, delivered through the future
                    fut.set_exception(exc)
            keep = None

        client.on_ready(oid, resolve)
        return fut

    def cancel(self, item: Any, force: bool, recursive: bool) -> None:
        key = item._stream_key() if isinstance(item, ObjectRefGenerator) else item._id
        if ids.kind_of(key) == ids.KIND_PUT:
            return  # a put has no task
        self.client.cancel(key, force, recursive)  # force on an actor call: ValueError

    # -- tasks -------------------------------------------------------------------------------
    def submit_task(self, fn: "RemoteFunction[Any, Any]", args: tuple,
                    kwargs: Dict[str, Any]) -> Any:
        _no_custom_resources(fn._options, fn._name)
        client = self.client
        (fn_id, blob, name, kind, num_returns, max_retries, retry, num_cpus, memory,
         backpressure) = fn._submission()
        client.register_function(fn_id, blob)
        task_id = ids.new_task_id()
        payload, deps, contained = encode_args(client, task_id, args, kwargs, name)
        spec = TaskSpec(task_id, name, fn_id, payload, deps, contained, kind, num_returns,
                        max_retries, retry, num_cpus, memory, backpressure)
        client.submit(spec)
        return self._outputs(spec)

    # -- actors ------------------------------------------------------------------------------
    def create_actor(self, cls: "ActorClass", args: tuple,
                     kwargs: Dict[str, Any]) -> "ActorHandle":
        from ..actor import ActorHandle, Descriptor

        client = self.client
        opts = cls._options
        _no_custom_resources(opts, cls._name)
        fn_id, blob = cls._pickled.get()
        client.register_function(fn_id, blob)
        descriptor = cls._descriptor()
        model, concurrency = cls._model()
        task_id = ids.new_task_id()
        name = f"{cls._name}.__init__"
        payload, deps, contained = encode_args(client, task_id, args, kwargs, name)
        spec = TaskSpec(task_id, name, fn_id, payload, deps, contained, protocol.RETURNS_STATIC,
                        0, 0, False, opts["num_cpus"], opts["memory"], 0, task_id, "__init__")
        actor_options = {"model": model, "max_concurrency": concurrency,
                         "max_restarts": opts["max_restarts"], "lifetime": opts["lifetime"]}
        actor_id, found = client.create_actor(spec, cls._name, opts["name"], descriptor.blob,
                                              actor_options, opts["get_if_exists"])
        if actor_id == task_id:
            return ActorHandle(actor_id, descriptor, _registered=True)
        return ActorHandle(actor_id, Descriptor.from_blob(found))

    def call_method(self, method: "ActorMethod", args: tuple, kwargs: Dict[str, Any]) -> Any:
        client = self.client
        handle = method._handle
        name, kind, num_returns, backpressure = method._submission()
        task_id = ids.new_task_id()
        payload, deps, contained = encode_args(client, task_id, args, kwargs, name)
        spec = TaskSpec(task_id, name, b"", payload, deps, contained, kind, num_returns,
                        handle._descriptor.max_task_retries, False, 0.0, None, backpressure,
                        handle._actor_id, method._name)
        client.submit(spec)
        return self._outputs(spec)

    def get_actor(self, name: str) -> Optional["ActorHandle"]:
        from ..actor import ActorHandle, Descriptor

        found = self.client.get_actor(name)
        if found is None:
            return None
        actor_id, blob = found
        return ActorHandle(actor_id, Descriptor.from_blob(blob))

    def kill_actor(self, handle: "ActorHandle", no_restart: bool) -> None:
        self.client.kill_actor(handle._actor_id, no_restart)

    # -- streaming generators ------------------------------------------------------------------
    def stream_next(self, gen: "ObjectRefGenerator[Any]",
                    timeout: Optional[float]) -> Optional["ObjectRef[Any]"]:
        oid = self.client.stream_next(gen._task_id, timeout)
        return None if oid is None else self._ref(oid)

    async def stream_anext(self, gen: "ObjectRefGenerator[Any]") -> Optional["ObjectRef[Any]"]:
        import asyncio  # only async users pay for it (workers start faster without it)

        client = self.client
        loop = asyncio.get_running_loop()
        key = gen._stream_key()
        while True:
            try:
                oid = client.stream_next(gen._task_id, 0)
            except GetTimeoutError:
                ready = loop.create_future()

                def wake(fut: Any = ready) -> None:
                    loop.call_soon_threadsafe(_resolve, fut)

                client.on_ready(key, wake)
                await ready
                continue  # another consumer may have taken the item: ask again
            return None if oid is None else self._ref(oid)

    def stream_close(self, gen: "ObjectRefGenerator[Any]") -> None:
        self.client.stream_close(gen._task_id)

    def stream_completed(self, gen: "ObjectRefGenerator[Any]") -> "ObjectRef[Any]":
        return ObjectRef(ids.completion_id(gen._task_id), _client=self)

    # -- the whole runtime ------------------------------------------------------------------------
    def shutdown(self) -> None:
        client = self.client
        client.close()
        node = client.node
        node.shutdown()
        node.store.close()

    def _driver_node(self) -> Any:
        if self.is_worker:
            raise RuntimeError("pygen.state is available in the driver only")
        node = self.client.node
        node.drain_dropped_refs()  # refs dropped a moment ago count as dropped
        return node

    def list_tasks(self) -> List[Dict[str, Any]]:
        return self._driver_node().introspection.list_tasks()

    def list_objects(self) -> List[Dict[str, Any]]:
        return self._driver_node().introspection.list_objects()

    def list_actors(self) -> List[Dict[str, Any]]:
        return self._driver_node().introspection.list_actors()

    def store_stats(self) -> Dict[str, Any]:
        return self._driver_node().introspection.store_stats()


def _no_custom_resources(opts: Dict[str, Any], name: str) -> None:
    needed = {k: v for k, v in (opts.get("resources") or {}).items() if v > 0}
    if needed:
        raise ValueError(f"{name} needs resources={needed}, which the local runtime does not "
                         f"have (it has CPUs only): it could never run.  Custom resources "
                         f"are a Ray cluster's (pygen.init(address=...))")


def _resolve(fut: Any) -> None:
    if not fut.done():
        fut.set_result(None)


__all__ = ["LocalRuntime", "options"]
