"""Empty the benchmark's Redis database with whichever client library is installed."""

import os
from urllib.parse import urlsplit

url = urlsplit(os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/13"))
try:
    import valkey as client_lib

    client = client_lib.Valkey(host=url.hostname, port=url.port or 6379, db=int(url.path[1:] or 0))
except ImportError:
    import redis as client_lib

    client = client_lib.Redis(host=url.hostname, port=url.port or 6379, db=int(url.path[1:] or 0))
client.flushdb()
client.close()
