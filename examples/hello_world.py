# The "Hello World" of the Celery guide in ../shared/seeds (Deepnote's "Ultimate guide to
# Celery library in Python"), line breaks restored, otherwise unchanged: an in-memory broker,
# an in-memory result backend, and eager mode, so no server and no worker are needed.
# Import Celery and necessary exceptions
from celery import Celery
from celery.exceptions import TimeoutError

# Create a Celery application instance with a broker (using in-memory for demo)
app = Celery("demo", broker="memory://", backend="cache+memory://")
# Configure Celery to execute tasks eagerly (synchronously, for demonstration)
app.conf.update(task_always_eager=True, task_eager_propagates=True)


# Define a simple task
@app.task(name="demo.add")  # naming the task (optional)
def add(x, y):
    """Add two numbers and return the result."""
    return x + y


# Using the task
if __name__ == "__main__":
    try:
        # Call the task asynchronously
        result = add.delay(4, 6)
        print("Task submitted, waiting for result...")
        # Get the result (with a timeout to avoid hanging if something goes wrong)
        value = result.get(timeout=5)
        print(f"Task result: {value}")
    except TimeoutError:
        print("The task did not complete within the timeout.")
    except Exception as e:
        print(f"Task failed with exception: {e}")
