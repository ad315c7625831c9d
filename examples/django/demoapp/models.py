"""A counter the tasks bump."""

from django.db import models


class Widget(models.Model):
    name = models.CharField(max_length=100, unique=True)
    bumps = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} ({self.bumps})"
