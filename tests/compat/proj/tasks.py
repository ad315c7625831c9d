import datetime
import time

from .celery import app


class CustomError(Exception):
    """Custom exception defined in the tasks module."""


@app.task
def add(x, y):
    return x + y


@app.task
def echo(*args, **kwargs):
    return [list(args), kwargs]


@app.task
def make_dict():
    return {"when": datetime.datetime(2024, 1, 2, 3, 4, 5, 678901,
                                      tzinfo=datetime.UTC),
            "naive": datetime.datetime(2024, 1, 2, 3, 4, 5),
            "n": 1, "l": [1, "a", None]}


@app.task
def fail():
    raise ValueError("boom")


@app.task
def fail_custom():
    raise CustomError("custom", 42)


@app.task(bind=True, name="proj.tasks.custom")
def custom_bound(self, x):
    return {"task_id": self.request.id, "x": x}


@app.task(bind=True)
def progress(self):
    self.update_state(state="PROGRESS", meta={"i": 1})
    time.sleep(1.5)
    return "done"


@app.task(ignore_result=True)
def no_result(x):
    return x


@app.task
def sleeper(sec=3):
    time.sleep(sec)
    return sec


# -- canvas fixtures (gen_fixtures.py canvas) ------------------------------------------------
@app.task
def tsum(values):
    return sum(values)


@app.task
def errback_old(task_id):
    return task_id


@app.task
def errback_new(request, exc, traceback):
    return request.id


@app.task(bind=True)
def replace_with_chain(self, x):
    from celery import chain

    raise self.replace(chain(add.s(x, 1), add.s(10)))


@app.task(bind=True)
def replace_with_group(self, x):
    from celery import group

    raise self.replace(group(add.s(x, 1), add.s(x, 2)))


@app.task
def spawn_chord():
    from celery import chord

    chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()
