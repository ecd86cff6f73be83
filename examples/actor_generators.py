# The actor section of the seed "Ray Generators" (doc_code/streaming_generator.py,
# "streaming actor models"), ported by changing the import: a generator method streams
# the same way in every execution model of actors -- a regular actor, an async actor and
# a threaded actor.  Then an async actor consumes another actor's generator with
# `async for` while it stays free to serve other calls.
import asyncio

import pygen


@pygen.remote
class Actor:
    def f(self):
        for i in range(5):
            yield i


@pygen.remote
class AsyncActor:
    async def f(self):
        for i in range(5):
            yield i


@pygen.remote(max_concurrency=5)
class ThreadedActor:
    def f(self):
        for i in range(5):
            yield i


actor = Actor.remote()
for ref in actor.f.remote():
    print(pygen.get(ref))

actor = AsyncActor.remote()
for ref in actor.f.remote():
    print(pygen.get(ref))

actor = ThreadedActor.remote()
for ref in actor.f.remote():
    print(pygen.get(ref))


# -- an async actor consuming a generator without blocking its event loop -----------------
@pygen.remote
class Summer:
    def __init__(self):
        self.seen = 0

    async def consume(self, producer):
        # the generator is started here, where it is consumed: a generator can be handed
        # to another task or actor on pygen's own runtime, not on Ray's (docs/cluster.md)
        total = 0
        async for ref in producer.f.remote():
            total += await ref
            self.seen += 1
            await asyncio.sleep(0)
        return total

    async def progress(self):
        return self.seen


summer = Summer.remote()
total = summer.consume.remote(Actor.remote())
print("items seen while it consumes:", pygen.get(summer.progress.remote()) <= 5)
print("sum of the stream:", pygen.get(total))
