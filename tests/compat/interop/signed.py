"""An app that signs its messages (app.setup_security), importable by upstream Celery and by
us alike; the key, certificate and store come from SIGNED_DIR (made by the test)."""

import os

from celery import Celery

URL = os.environ.get("INTEROP_URL", "redis://127.0.0.1:6379/12")
FOLDER = os.environ["SIGNED_DIR"]

app = Celery("signed", broker=URL, backend=URL)
app.conf.update(
    task_serializer="auth",
    accept_content=["auth"],
    result_accept_content=["json"],
    security_key=os.path.join(FOLDER, os.environ.get("SIGNED_KEY", "signer.key")),
    security_certificate=os.path.join(FOLDER, os.environ.get("SIGNED_CERT", "signer.pem")),
    security_cert_store=os.path.join(FOLDER, "store", "*.pem"),
)
app.setup_security()


@app.task(name="signed.add")
def add(x, y):
    return x + y
