"""The canvas interop app as an upstream worker runs it (``celery -A upcanvas worker``)."""

import os

from canvasapp import make_app

app = make_app(os.environ["INTEROP_URL"], "upstream", "to-upstream")
