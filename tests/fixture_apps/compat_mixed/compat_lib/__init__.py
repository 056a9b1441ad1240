"""A shared library outside the app's package: decorators an app wraps its handlers with."""

import functools


def audited(fn):
    """A plain decorator without functools.wraps: the wrapper's module is this library's."""

    def wrapper(socket, *args):
        socket.emit("audited", fn.__name__)
        return fn(socket, *args)

    return wrapper


def async_audited(fn):
    """An async decorator without functools.wraps."""

    async def wrapper(socket, *args):
        await socket.emit("audited", fn.__name__)
        return await fn(socket, *args)

    return wrapper


def traced(fn):
    """A plain decorator with functools.wraps around whatever it is given (here: async def)."""

    @functools.wraps(fn)
    def wrapper(socket, *args):
        return fn(socket, *args)

    return wrapper
