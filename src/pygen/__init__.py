"""pygen: remote functions and remote generators on one machine, over a shared-memory
object store.  The API follows Ray's core API; see SPEC.md in the project for the contract.

    import pygen

    @pygen.remote
    def squares(n):
        for i in range(n):
            yield i * i

    for ref in squares.remote(3):      # items arrive while the task runs
        print(pygen.get(ref))
"""
from . import exceptions, state
from .actor import ActorClass, ActorHandle, ActorMethod
from .api import (cancel, get, get_actor, init, is_initialized, kill, method, put, remote,
                  shutdown, wait)
from .generators import DynamicObjectRefGenerator, ObjectRefGenerator
from .object_ref import ObjectRef

__version__ = "0.1.0"

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "put", "get", "wait", "cancel",
    "get_actor", "kill", "method",
    "ObjectRef", "ObjectRefGenerator", "DynamicObjectRefGenerator", "ActorClass",
    "ActorHandle", "ActorMethod", "exceptions", "state",
]

