"""Flask applications the tests serve (``tests.apps.basic:app`` ...)."""
