"""``python -m celery``: the ``celery`` command."""

from .bin.celery import main

if __name__ == "__main__":
    main()
