"""The Celery tasks. Their names start with ``app.tasks.<queue>.``, which routes them:
``app.tasks.email.*`` to the ``email`` queue, ``app.tasks.reports.*`` to ``reports``
(see ``celeryconfig.py``)."""
