"""worker-celery-email: a Celery worker sending emails and daily reports, built on celery_kit.

Start it with ``celery -A app.celery_app worker -Q email,reports``; see README.md.
"""
