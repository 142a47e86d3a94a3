"""The drop-in compatibility job (`make compat`): Celery's own unit tests, with and without the kit.

Not part of the installed package. See compat/README.md.
"""
