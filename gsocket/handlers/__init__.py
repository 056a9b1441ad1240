"""App handlers: the registry apps decorate with, dispatch, and the ``Socket`` they receive."""
