"""Sample app for the main job: async (I/O-like) and sync (CPU-like) tasks."""

import asyncio
import hashlib
import os
from pathlib import Path

from celery import Celery

#: Where the main job keeps its SQLite files (the broker and the results).
DATA = Path(os.environ.get("WORKLOAD_DATA", Path(__file__).resolve().parent.parent / ".cache" / "main-job"))
#: The embedded default: SQLite for both. WORKLOAD_BROKER / WORKLOAD_BACKEND point the same
#: workload elsewhere, e.g. redis://127.0.0.1:6379/14 for both.
BROKER = os.environ.get("WORKLOAD_BROKER", f"sqlite:///{DATA}/broker.db")
BACKEND = os.environ.get("WORKLOAD_BACKEND", f"db+sqlite:///{DATA}/results.db")

app = Celery("workload", broker=BROKER, backend=BACKEND)


@app.task
async def fetch_page(page: int, delay_ms: float = 10.0) -> dict:
    """Pretend to call a slow API: awaits, so hundreds run at once on one loop worker."""
    await asyncio.sleep(delay_ms / 1000)
    return {"page": page, "items": page % 7}


@app.task
def checksum(block: int, rounds: int = 2000) -> str:
    """Burn some CPU in a sync worker thread."""
    digest = str(block).encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


@app.task
def flaky(n: int) -> int:
    """Fails for multiples of 7, so the summary shows failures being reported."""
    if n % 7 == 0:
        raise ValueError(f"refusing {n}")
    return n
