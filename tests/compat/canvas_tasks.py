"""The tasks of gen_fixtures.py's canvas cases (tests/compat/proj/tasks.py, upstream's
side) as our app registers them: the golden canvas tests send them (test_golden_canvas.py)
and run them on our worker (test_golden_canvas_worker.py) under the same names."""

from __future__ import annotations

from celery import Celery, chain, chord, group


def register_canvas_tasks(app: Celery) -> None:
    @app.task(name="proj.tasks.add")
    def add(x, y):
        return x + y

    @app.task(name="proj.tasks.tsum")
    def tsum(values):
        return sum(values)

    @app.task(name="proj.tasks.echo")
    def echo(*args, **kwargs):
        return [list(args), kwargs]

    @app.task(name="proj.tasks.fail")
    def fail():
        raise ValueError("boom")

    @app.task(name="proj.tasks.errback_old")
    def errback_old(task_id):
        return task_id

    @app.task(name="proj.tasks.errback_new")
    def errback_new(request, exc, traceback):
        return request.id

    @app.task(name="proj.tasks.replace_with_chain", bind=True)
    def replace_with_chain(self, x):
        raise self.replace(chain(add.s(x, 1), add.s(10)))

    @app.task(name="proj.tasks.replace_with_group", bind=True)
    def replace_with_group(self, x):
        raise self.replace(group(add.s(x, 1), add.s(x, 2)))

    @app.task(name="proj.tasks.spawn_chord")
    def spawn_chord():
        chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()
