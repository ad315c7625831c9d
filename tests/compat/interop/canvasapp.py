"""Tasks of the canvas interop tests, importable by upstream Celery and by us alike.

``make_app(url, impl, queue)`` builds the app: ``impl`` names the side it runs on (a
``whoami`` result says which worker ran it), ``queue`` is the default queue, so that each
side's follow-ups (chain steps, chord bodies, callbacks) go to its own workers. Explicit
task names, as upstream and we must agree on them.
"""

import time


def make_app(url, impl, queue):
    from celery import Celery

    app = Celery("interop-canvas", broker=url, backend=url, set_as_current=False)
    app.conf.task_default_queue = queue

    @app.task(name="interop.add")
    def add(x, y):
        return x + y

    @app.task(name="interop.tsum")
    def tsum(values):
        return sum(values)

    @app.task(name="interop.echo")
    def echo(value):
        return value

    @app.task(name="interop.fail")
    def fail(message):
        raise ValueError(message)

    @app.task(name="interop.whoami")
    def whoami(i, delay=0.0):
        time.sleep(delay)
        return [i, impl]

    @app.task(name="interop.errback_old")
    def errback_old(task_id):
        """Old style: sent as a task with the failed task's id."""
        return ["old", task_id, impl]

    @app.task(name="interop.errback_new")
    def errback_new(request, exc, traceback):
        """New style: called in the worker; what it saw is stored as a result
        ``errback-new-<failed task id>``."""
        app.backend.store_result(f"errback-new-{request.id}",
                                 [type(exc).__name__, list(exc.args), impl], "SUCCESS")

    @app.task(name="interop.replace_with_chain", bind=True)
    def replace_with_chain(self, x):
        from celery import chain

        raise self.replace(chain(add.s(x, 1), add.s(10)))

    @app.task(name="interop.replace_with_group", bind=True)
    def replace_with_group(self, x):
        from celery import group

        raise self.replace(group(add.s(x, 1), add.s(x, 2)))

    if impl == "ours":  # upstream Celery has no async def tasks

        @app.task(name="interop.add_async")
        async def add_async(x, y):
            return x + y

    return app
