"""A numeric pipeline on pygen: a large array on disk, read in chunks by a generator task,
each chunk transformed by a task in another worker, the results reduced by the driver as
they arrive.  The same work runs by plain numpy in one process, and by joblib when it is
installed, so the three can be compared on this machine:

    python examples/pipeline.py [MEGABYTES]      # default 128 MB of float32 samples

The transform is the average power spectrum of the signal (Welch's method: Hann-windowed
FFTs of 4096 samples, half overlapping) and its mean and spread.  What pygen brings here:

* the reader never holds more than a few chunks: ``generator_backpressure=4`` pauses it
  at its ``yield`` while 4 chunks are waiting for the driver to take them, so a slow
  consumer bounds the memory instead of letting the reader run ahead;
* chunks travel through shared memory: the transform task gets a read-only zero-copy
  view of the chunk the reader stored (one copy, at the ``yield``);
* the driver reduces each result as soon as it exists (``pygen.wait``), while the reader
  and the transforms go on.
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import numpy as np

import pygen

WINDOW = 4096                    # samples per FFT
CHUNK = 256 * WINDOW             # samples per chunk (4 MiB of float32)
IN_FLIGHT = 4                    # transform tasks running or waiting to be reduced


# == the work, as plain functions (every variant runs these) ==================================
Result = Tuple[np.ndarray, int, int, float, float]


def power_spectrum(chunk: np.ndarray) -> Result:
    """Sum of the Hann-windowed power spectra of the chunk's half-overlapping windows, their
    number, and the chunk's length, sum and sum of squares (for the mean and the spread)."""
    windows = np.lib.stride_tricks.sliding_window_view(chunk, WINDOW)[:: WINDOW // 2]
    spectra = np.abs(np.fft.rfft(windows * np.hanning(WINDOW), axis=1)) ** 2
    x = chunk.astype(np.float64)
    return spectra.sum(axis=0), len(windows), len(x), float(x.sum()), float(np.dot(x, x))


class Totals:
    """The reduction: results added as they come, in any order."""

    def __init__(self) -> None:
        self.spectrum = np.zeros(WINDOW // 2 + 1)
        self.windows = 0
        self.total = 0.0
        self.squares = 0.0
        self.samples = 0

    def add(self, result: Result) -> None:
        spectrum, windows, samples, total, squares = result
        self.spectrum += spectrum
        self.windows += windows
        self.total += total
        self.squares += squares
        self.samples += samples

    def summary(self) -> Tuple[np.ndarray, float, float]:
        mean = self.total / self.samples
        return self.spectrum / self.windows, mean, (self.squares / self.samples - mean**2) ** 0.5


def chunk_bounds(n: int) -> Iterator[Tuple[int, int]]:
    for start in range(0, n, CHUNK):
        yield start, min(start + CHUNK, n)


# == pygen ====================================================================================
@pygen.remote(generator_backpressure=4, num_cpus=0)  # reading is I/O: it takes no CPU slot
def read_chunks(path: str) -> Iterator[np.ndarray]:
    data = np.load(path, mmap_mode="r")   # pages are read from disk as chunks are sliced
    for start, stop in chunk_bounds(len(data)):
        yield data[start:stop]            # stored (copied once into shared memory) here


transform = pygen.remote(power_spectrum)


def run_pygen(path: str) -> Totals:
    totals = Totals()
    pending: List[pygen.ObjectRef[Any]] = []
    for chunk_ref in read_chunks.remote(path):
        pending.append(transform.remote(chunk_ref))  # the task reads the chunk zero-copy
        if len(pending) >= IN_FLIGHT:                # reduce what is done, keep 4 in flight
            ready, pending = pygen.wait(pending, num_returns=1)
            for ref in ready:
                totals.add(pygen.get(ref))
    for ref in pending:
        totals.add(pygen.get(ref))
    return totals


# == the same work by numpy alone, and by joblib =============================================
def run_numpy(path: str) -> Totals:
    totals = Totals()
    data = np.load(path, mmap_mode="r")
    for start, stop in chunk_bounds(len(data)):
        totals.add(power_spectrum(data[start:stop]))
    return totals


def run_joblib(path: str) -> Totals:
    from joblib import Parallel, delayed

    totals = Totals()
    data = np.load(path, mmap_mode="r")   # joblib passes memory-mapped slices by reference
    with Parallel(n_jobs=2, return_as="generator_unordered") as parallel:
        for result in parallel(delayed(power_spectrum)(data[start:stop])
                               for start, stop in chunk_bounds(len(data))):
            totals.add(result)
    return totals


# == measuring ================================================================================
def private_kib(pid: int) -> int:
    """RssAnon: a process's private resident memory (shared memory does not count)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> List[int]:
    kids: List[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids + [d for k in kids for d in descendants(k)]


class PeakMemory:
    """Samples, every 10 ms: the private memory of this process and of every process below
    it (pygen's or joblib's workers), and the bytes pygen's object store holds."""

    def __init__(self) -> None:
        self.private_kib = 0
        self.store_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.01):
            self.private_kib = max(self.private_kib,
                                   sum(private_kib(p) for p in [me] + descendants(me)))
            if pygen.is_initialized():
                self.store_bytes = max(self.store_bytes, pygen.state.store_stats()["used"])

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(name: str, run: Callable[[str], Totals], path: str, nbytes: int,
          results: Dict[str, Tuple[np.ndarray, float, float]]) -> None:
    with PeakMemory() as peak:
        t0 = time.perf_counter()
        totals = run(path)
        seconds = time.perf_counter() - t0
    results[name] = totals.summary()
    store = f", object store peak {peak.store_bytes / 2**20:,.0f} MiB" if peak.store_bytes else ""
    print(f"{name:<22} {nbytes / seconds / 2**20:7,.0f} MiB/s  ({seconds:.2f} s)  peak private "
          f"memory {peak.private_kib / 1024:,.0f} MiB{store}", flush=True)


def main() -> None:
    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    n = megabytes * 2**20 // 4
    with tempfile.TemporaryDirectory(prefix="pygen-pipeline-") as tmp:
        path = os.path.join(tmp, "signal.npy")
        rng = np.random.default_rng(0)
        t = np.arange(n, dtype=np.float32)
        signal = np.sin(t * np.float32(0.05)) + rng.standard_normal(n, dtype=np.float32)
        np.save(path, signal)
        del t, signal
        nbytes = os.path.getsize(path)
        print(f"{nbytes / 2**20:,.0f} MiB of float32 samples on disk, chunks of "
              f"{CHUNK * 4 / 2**20:.0f} MiB; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f} (other programs' work slows the parallel runs)",
              flush=True)

        results: Dict[str, Tuple[np.ndarray, float, float]] = {}
        timed("numpy, one process", run_numpy, path, nbytes, results)
        pygen.init(num_cpus=2, object_store_memory=256 * 2**20)
        try:
            run_pygen(path)   # warm: workers started, functions registered
            timed("pygen pipeline", run_pygen, path, nbytes, results)
        finally:
            pygen.shutdown()
        try:
            import joblib  # noqa: F401
        except ImportError:
            print("joblib                 not installed (pip install joblib to compare)")
        else:
            timed("joblib, 2 processes", run_joblib, path, nbytes, results)

    reference = results["numpy, one process"]
    agree = all(np.allclose(r[0], reference[0]) and np.isclose(r[1], reference[1]) and
                np.isclose(r[2], reference[2]) for r in results.values())
    spectrum, mean, std = reference
    print(f"results agree: {agree}; mean {mean:.4f}, std {std:.4f}, strongest frequency bin "
          f"{int(np.argmax(spectrum[1:])) + 1} of {len(spectrum) - 1}")
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
