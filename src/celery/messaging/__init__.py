"""Wire formats: serializers and Celery's task protocol v2."""
