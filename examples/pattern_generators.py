# Seed: "Pattern: Using generators to reduce heap memory usage" (Ray docs), ported by
# changing only the import and the exception names.  The normal function holds every
# array on its heap and is killed; the generator frees each one after it is stored.
#
# On a machine with plenty of RAM a heap of 10 GB does not crash by itself; run it with a
# per-worker memory limit, as the tests and `python -m pygen demo` do:
#     PYGEN_WORKER_MEMORY_LIMIT=$((2<<30)) python examples/pattern_generators.py
#
# One difference from Ray, on purpose (SPEC 4.1): pygen makes the first refs ready as
# soon as their values are yielded, so `get(...)[0]` below returns after the first yield,
# not after the last one as the comment from Ray's docs says; the program then prints
# "Success!" and, at exit, stops the generator.  To wait for the whole task, get the
# last ref (`[-1]`), which is ready only when the generator has finished.
import numpy as np
import pygen


@pygen.remote(max_retries=0)
def large_values(num_returns):
    return [
        np.random.randint(
            np.iinfo(np.int8).max, size=(100_000_000, 1), dtype=np.int8
        )
        for _ in range(num_returns)
    ]


@pygen.remote(max_retries=0)
def large_values_generator(num_returns):
    for i in range(num_returns):
        yield np.random.randint(
            np.iinfo(np.int8).max, size=(100_000_000, 1), dtype=np.int8
        )
        print(f"yielded return value {i}")


num_returns = 100
# Worker will likely OOM using normal returns.
print("Using normal functions...")
try:
    pygen.get(large_values.options(num_returns=num_returns).remote(num_returns)[0])
except pygen.exceptions.WorkerCrashedError:
    print("Worker failed with normal function")

# Using a generator will allow the worker to finish.
# Note that this will block until the full task is complete, i.e. the
# last yield finishes.
print("Using generators...")
pygen.get(
    large_values_generator.options(num_returns=num_returns).remote(num_returns)[0]
)
print("Success!")
