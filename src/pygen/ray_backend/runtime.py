"""``RayRuntime``: pygen's value-level seam (``pygen.runtime.Runtime``) over Ray's public API.

    pygen face --RayRuntime--> ray.remote / ray.get / ray.wait / ray.cancel / ray.kill ...
                                   |  functions and classes wrapped (remote.py) so that
                                   v  pygen's semantics hold inside Ray's workers
                               Ray cluster

Every Ray exception that reaches the program is converted (errors.py); every option of
pygen's is mapped to Ray's or, where Ray cannot honour it, refused with
``NotImplementedError`` naming the feature and the backend -- never a silent difference.
docs/cluster.md has the table.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from ..exceptions import GetTimeoutError, OutOfMemoryError
from ..generators import DynamicObjectRefGenerator, ObjectRefGenerator
from ..object_ref import ObjectRef
from ..runtime import not_on
from . import errors, remote
from .handles import RayActorHandle, RayObjectRef, RayObjectRefGenerator

if TYPE_CHECKING:
    import concurrent.futures

    from ..actor import ActorClass, ActorHandle, ActorMethod
    from ..remote_function import RemoteFunction

log = logging.getLogger("pygen")

# How long kill() waits for Ray to report the actor's process gone.
KILL_TIMEOUT = 60.0


class RayRuntime:
    backend = "ray"

    def __init__(self, *, is_worker: bool, owns_ray: bool = False,
                 worker_memory_limit: Optional[int] = None) -> None:
        self.is_worker = is_worker
        self.closed = False
        self.forked = False
        self.owns_ray = owns_ray
        self.worker_memory_limit = worker_memory_limit
        self._tasks: Dict[int, Any] = {}    # id(RemoteFunction) -> (fn, Ray's remote function)
        self._classes: Dict[int, Any] = {}  # id(ActorClass) -> (cls, Ray's actor class)

    @classmethod
    def connect(cls, address: str, local_only: Dict[str, Any], *, from_env: bool,
                worker_memory_limit: Optional[int], log_to_driver: bool) -> "RayRuntime":
        if not isinstance(address, str):
            raise TypeError(f"address must be a str ('auto' or 'HOST:PORT'), "
                            f"got {type(address).__name__}")
        if address.startswith("ray://"):
            raise ValueError(
                f"address={address!r} is a Ray Client address, and Ray Client cannot carry "
                f"streaming generators (Ray's own limitation), which pygen is built on. Run "
                f"the driver on a node of the cluster and use address='auto' (or the "
                f"cluster's HOST:PORT), or submit the program as a Ray job "
                f"(`ray job submit -- python your_program.py`)")
        given = sorted(name for name, value in local_only.items() if value is not None)
        if given:
            what = ", ".join(f"{name}=" for name in given)
            if not from_env:
                raise ValueError(f"{what} belong to the local runtime; on a Ray cluster "
                                 f"(address={address!r}) the cluster's own settings decide: "
                                 f"leave them out")
            log.warning("PYGEN_ADDRESS=%s: pygen runs on that Ray cluster; %s of "
                        "pygen.init() apply to the local runtime only and are ignored",
                        address, what)
        try:
            import ray
        except ImportError:
            raise ImportError("pygen.init(address=...) runs pygen on a Ray cluster and needs "
                              "Ray: pip install 'pygen[ray]'") from None
        owns = False
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=log_to_driver,
                     logging_level=logging.WARNING)
            owns = True
        return cls(is_worker=False, owns_ray=owns, worker_memory_limit=worker_memory_limit)

    # -- counting: Ray's own ---------------------------------------------------------------
    def add_ref(self, oid: bytes, registered: bool = False) -> None:
        pass

    def remove_ref(self, oid: bytes) -> None:
        pass

    # -- objects -------------------------------------------------------------------------------
    def put(self, value: Any) -> ObjectRef[Any]:
        import ray

        try:
            return RayObjectRef(ray.put(_unwrap_nested(value)), self, is_put=True)
        except Exception as exc:
            raise errors.convert(exc) from None

    def get(self, refs: Sequence[ObjectRef[Any]], timeout: Optional[float]) -> List[Any]:
        import ray

        backing = [_backing_of(r) for r in refs]
        try:
            values = ray.get(backing, timeout=timeout)
        except Exception as exc:
            raise errors.convert(exc) from None
        return [self._value(v) for v in values]

    def _value(self, value: Any) -> Any:
        """A value as pygen gives it: Ray's dynamic generator becomes pygen's."""
        if type(value).__name__ == "DynamicObjectRefGenerator" and \
                not isinstance(value, DynamicObjectRefGenerator):
            return DynamicObjectRefGenerator([RayObjectRef(r, self) for r in value])
        return value

    def wait(self, items: Sequence[Any], num_returns: int,
             timeout: Optional[float]) -> List[bool]:
        import ray

        backing = [_backing_of(item) for item in items]
        if len({id(b) for b in backing}) != len(backing) or \
                len({i._id if isinstance(i, ObjectRef) else id(i) for i in items}) != len(items):
            raise ValueError("pygen.wait() got the same ref more than once")
        try:
            ready, _ = ray.wait(backing, num_returns=num_returns, timeout=timeout)
        except Exception as exc:
            raise errors.convert(exc) from None
        ready_ids = {id(r) for r in ready}
        return [id(b) in ready_ids for b in backing]

    def future(self, ref: ObjectRef[Any]) -> "concurrent.futures.Future[Any]":
        import concurrent.futures

        inner = _backing_of(ref).future()
        outer: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def done(fut: Any) -> None:
            if not outer.set_running_or_notify_cancel():
                return
            try:
                outer.set_result(self._value(fut.result()))
            except BaseException as exc:
                outer.set_exception(errors.convert(exc))

        inner.add_done_callback(done)
        return outer

    def cancel(self, item: Any, force: bool, recursive: bool) -> None:
        import ray

        if isinstance(item, RayObjectRef) and item._is_put:
            return  # a put has no task
        try:
            ray.cancel(_backing_of(item), force=force, recursive=recursive)
        except Exception as exc:
            raise errors.convert(exc) from None

    # -- tasks -------------------------------------------------------------------------------
    def _ray_function(self, fn: "RemoteFunction[Any, Any]") -> Any:
        cached = self._tasks.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1]
        import ray

        opts = fn._options
        name = opts["name"] or fn._name
        num_returns = opts["num_returns"]
        if num_returns is None:
            num_returns = "streaming" if fn._is_generator else 1
        kind = num_returns if isinstance(num_returns, str) else "static"
        limit = opts["memory"] or self.worker_memory_limit
        wrapper = remote.task_wrapper(fn._function, name, kind,
                                      num_returns if kind == "static" else 0, limit)
        ray_opts: Dict[str, Any] = {"num_returns": num_returns, "name": name,
                                    "max_retries": opts["max_retries"],
                                    "num_cpus": opts["num_cpus"]}
        retry = opts["retry_exceptions"]
        if limit is not None and retry is not True:
            # a task killed for its memory counts against max_retries, as a crash does
            retry = list(retry or ()) + [OutOfMemoryError]
        ray_opts["retry_exceptions"] = list(retry) if isinstance(retry, tuple) else retry
        if opts["generator_backpressure"]:
            ray_opts["_generator_backpressure_num_objects"] = opts["generator_backpressure"]
        if opts.get("resources"):
            ray_opts["resources"] = dict(opts["resources"])
        with warnings.catch_warnings():
            # Ray deprecates num_returns="dynamic"; pygen keeps it (SPEC §4.2)
            warnings.simplefilter("ignore", DeprecationWarning)
            remote_fn = ray.remote(**ray_opts)(wrapper)
        self._tasks[id(fn)] = (fn, remote_fn)
        return remote_fn

    def submit_task(self, fn: "RemoteFunction[Any, Any]", args: tuple,
                    kwargs: Dict[str, Any]) -> Any:
        remote_fn = self._ray_function(fn)
        try:
            out = remote_fn.remote(*_arguments(args), **_keyword_arguments(kwargs))
        except Exception as exc:
            raise errors.convert(exc) from None
        return self._outputs(out)

    def _outputs(self, out: Any) -> Any:
        if out is None:
            return None
        if isinstance(out, list):
            return [RayObjectRef(r, self) for r in out]
        if type(out).__name__ == "ObjectRefGenerator":
            return RayObjectRefGenerator(out, self)
        return RayObjectRef(out, self)

    # -- actors ------------------------------------------------------------------------------
    def create_actor(self, cls: "ActorClass", args: tuple,
                     kwargs: Dict[str, Any]) -> "ActorHandle":
        import ray

        opts = cls._options
        if opts["memory"] is not None:
            raise not_on("ray", "memory= as a limit on an actor's private memory",
                         "leave it out, or run the actor on the local runtime")
        descriptor = cls._descriptor()
        cached = self._classes.get(id(cls))
        if cached is None or cached[0] is not cls:
            model, concurrency = cls._model()
            wrapped = remote.actor_class(cls._cls, model == _MODEL_ASYNC, descriptor.blob)
            cached = self._classes[id(cls)] = (cls, wrapped, concurrency)
        _, wrapped, concurrency = cached
        ray_opts: Dict[str, Any] = {"max_restarts": opts["max_restarts"],
                                    "max_task_retries": opts["max_task_retries"],
                                    "max_concurrency": concurrency,
                                    "num_cpus": opts["num_cpus"]}
        if opts["name"] is not None:
            ray_opts["name"] = opts["name"]
            ray_opts["get_if_exists"] = opts["get_if_exists"]
        if opts["lifetime"] is not None:
            ray_opts["lifetime"] = opts["lifetime"]
        if opts.get("resources"):
            ray_opts["resources"] = dict(opts["resources"])
        try:
            if opts["name"] is not None and not opts["get_if_exists"]:
                try:
                    ray.get_actor(opts["name"])
                except ValueError:
                    pass
                else:
                    raise ValueError(f"an actor named {opts['name']!r} already exists; pick "
                                     f"another name, use pygen.get_actor({opts['name']!r}), or "
                                     f"pass get_if_exists=True")
            backing = ray.remote(**ray_opts)(wrapped).remote(*_arguments(args),
                                                             **_keyword_arguments(kwargs))
        except ValueError:
            raise
        except Exception as exc:
            raise errors.convert(exc) from None
        return RayActorHandle(backing, descriptor, self)

    def call_method(self, method: "ActorMethod", args: tuple, kwargs: Dict[str, Any]) -> Any:
        handle = method._handle
        name, kind_code, num_returns, backpressure = method._submission()
        requested = method._options.get("num_returns", 1)
        backing = handle._backing  # type: ignore[attr-defined]
        ray_opts: Dict[str, Any] = {"name": name}
        try:
            if method._options.get("_generator"):
                kind = requested if isinstance(requested, str) else "static"
                ray_opts["num_returns"] = requested
                if backpressure:
                    ray_opts["_generator_backpressure_num_objects"] = backpressure
                out = backing._pygen_stream.options(**ray_opts).remote(
                    method._name, kind, num_returns if kind == "static" else 0,
                    *_arguments(args), **_keyword_arguments(kwargs))
            else:
                ray_opts["num_returns"] = requested
                try:  # the user's method's own caller (remote.actor_class)
                    target = getattr(backing, method._name)
                except AttributeError:
                    out = backing._pygen_call.options(**ray_opts).remote(
                        method._name, *_arguments(args), **_keyword_arguments(kwargs))
                else:
                    out = target.options(**ray_opts).remote(
                        *_arguments(args), **_keyword_arguments(kwargs))
        except Exception as exc:
            raise errors.convert(exc) from None
        return self._outputs(out)

    def get_actor(self, name: str) -> Optional["ActorHandle"]:
        import ray

        from ..actor import Descriptor

        try:
            backing = ray.get_actor(name)
        except ValueError:
            return None
        try:
            blob = ray.get(backing._pygen_descriptor.remote())
        except Exception as exc:
            raise errors.convert(exc) from None
        return RayActorHandle(backing, Descriptor.from_blob(blob), self)

    def kill_actor(self, handle: "ActorHandle", no_restart: bool) -> None:
        """``ray.kill``, then wait until the process is gone: a call to the actor fails
        (dead) or answers from a new process (restarted)."""
        import ray

        backing = handle._backing  # type: ignore[attr-defined]
        try:
            before = ray.get(backing._pygen_pid.remote(), timeout=KILL_TIMEOUT)
        except Exception:
            before = None
        ray.kill(backing, no_restart=no_restart)
        deadline = time.monotonic() + KILL_TIMEOUT
        while time.monotonic() < deadline:
            try:
                pid = ray.get(backing._pygen_pid.remote(), timeout=KILL_TIMEOUT)
            except ray.exceptions.ActorUnavailableError:
                # restarting: Ray fails calls sent now (without task retries) instead of
                # queueing them as pygen does, so return only once the new process answers
                time.sleep(0.01)
                continue
            except Exception:
                return  # the actor is dead
            if pid != before:
                return  # restarted: the killed process is gone
            time.sleep(0.01)

    # -- streaming generators ------------------------------------------------------------------
    def stream_next(self, gen: ObjectRefGenerator[Any],
                    timeout: Optional[float]) -> Optional[ObjectRef[Any]]:
        import ray

        g: RayObjectRefGenerator = gen  # type: ignore[assignment]
        with g._lock:
            if g._closed:
                return None
            if timeout is not None:
                ready, _ = ray.wait([g._backing], timeout=timeout)
                if not ready:
                    raise GetTimeoutError(f"no item within {timeout} s")
            try:
                return RayObjectRef(next(g._backing), self)
            except StopIteration:
                return None

    async def stream_anext(self, gen: ObjectRefGenerator[Any]) -> Optional[ObjectRef[Any]]:
        g: RayObjectRefGenerator = gen  # type: ignore[assignment]
        if g._closed:
            return None
        try:
            return RayObjectRef(await g._backing.__anext__(), self)
        except StopAsyncIteration:
            return None

    def stream_close(self, gen: ObjectRefGenerator[Any]) -> None:
        """Stop the task (Ray's cancellation raises in it at its current point, so its
        ``finally`` runs) and end the stream here."""
        import ray

        g: RayObjectRefGenerator = gen  # type: ignore[assignment]
        with g._lock:
            if g._closed:
                return
            g._closed = True
        try:
            ray.cancel(g._backing)
        except Exception:
            pass  # already over

    def stream_completed(self, gen: ObjectRefGenerator[Any]) -> ObjectRef[Any]:
        g: RayObjectRefGenerator = gen  # type: ignore[assignment]
        return RayObjectRef(g._backing.completed(), self)

    # -- the whole runtime -------------------------------------------------------------------------
    def shutdown(self) -> None:
        self.closed = True
        if self.owns_ray:
            import ray

            ray.shutdown()

    def _state(self, what: str) -> List[Dict[str, Any]]:
        try:
            from ray.util import state
            return [dict(getattr(x, "__dict__", {}) or x) for x in
                    getattr(state, what)(limit=10_000)]
        except Exception as exc:
            raise not_on("ray", f"pygen.state.{what}()",
                         f"Ray's state API did not answer ({type(exc).__name__}: {exc}); it "
                         f"needs the cluster's dashboard") from None

    def list_tasks(self) -> List[Dict[str, Any]]:
        return [{"task_id": t.get("task_id"), "name": t.get("name"),
                 "state": str(t.get("state", "")).lower(), "attempt": t.get("attempt_number"),
                 "worker_pid": t.get("worker_pid"), "error": t.get("error_message")}
                for t in self._state("list_tasks")]

    def list_objects(self) -> List[Dict[str, Any]]:
        return [{"id": o.get("object_id"), "size": o.get("object_size"),
                 "state": o.get("task_status"), "kind": o.get("reference_type")}
                for o in self._state("list_objects")]

    def list_actors(self) -> List[Dict[str, Any]]:
        return [{"actor_id": a.get("actor_id"), "class_name": a.get("class_name"),
                 "name": a.get("name") or None, "state": str(a.get("state", "")).lower(),
                 "pid": a.get("pid"), "death_cause": a.get("death_cause")}
                for a in self._state("list_actors")]

    def store_stats(self) -> Dict[str, Any]:
        import ray

        total = ray.cluster_resources().get("object_store_memory", 0)
        free = ray.available_resources().get("object_store_memory", 0)
        return {"capacity": int(total), "used": int(total - free), "free": int(free),
                "backend": "ray"}


_MODEL_ASYNC = 2  # protocol.MODEL_ASYNC, without importing the local runtime's core


def _backing_of(item: Any) -> Any:
    backing = getattr(item, "_backing", None)
    if backing is None:
        raise ValueError(f"{item!r} belongs to the local runtime, not to this Ray cluster: "
                         f"refs cannot move between pygen sessions")
    return backing


def _unwrap(value: Any) -> Any:
    """A top-level argument as Ray takes it: Ray resolves its refs before the task runs,
    as pygen resolves its own (SPEC §2); a generator cannot travel (Ray's limitation)."""
    if isinstance(value, RayObjectRef):
        return value._backing
    if isinstance(value, ObjectRefGenerator):
        raise not_on("ray", "passing an ObjectRefGenerator to another task or actor",
                     "Ray's generators cannot leave the process that started them")
    if isinstance(value, ObjectRef):
        _backing_of(value)
    return value


def _unwrap_nested(value: Any) -> Any:
    if isinstance(value, ObjectRef):
        raise TypeError("pygen.put() of an ObjectRef is not allowed")
    return value


def _arguments(args: tuple) -> list:
    return [_unwrap(a) for a in args]


def _keyword_arguments(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    return {k: _unwrap(v) for k, v in kwargs.items()}


__all__ = ["RayRuntime"]
