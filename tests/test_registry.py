"""Registration as Frappe defines it: owners, any callable, async detection, refusals."""

from __future__ import annotations

import functools

import pytest

from gsocket.handlers.registry import Registry, describe, is_async_callable


async def coroutine_handler(socket) -> None:
    return None


def plain_handler(socket, text: str) -> str:
    return text


class AsyncCallable:
    async def __call__(self, socket) -> None:
        return None


class PlainCallable:
    def __call__(self, socket) -> None:
        return None

    def method(self, socket) -> None:
        return None

    async def async_method(self, socket) -> None:
        return None


def without_wraps(fn):
    def wrapper(socket, *args):
        return fn(socket, *args)

    return wrapper


def with_wraps(fn):
    @functools.wraps(fn)
    def wrapper(socket, *args):
        return fn(socket, *args)

    return wrapper


@pytest.mark.parametrize(
    "fn, expected",
    [
        (coroutine_handler, True),
        (plain_handler, False),
        (AsyncCallable(), True),
        (PlainCallable(), False),
        (PlainCallable().method, False),
        (PlainCallable().async_method, True),
        (functools.partial(coroutine_handler), True),
        (functools.partial(plain_handler), False),
        (with_wraps(coroutine_handler), True),
        (without_wraps(coroutine_handler), False),  # undetectable: run when it returns one
        (print, False),
    ],
)
def test_async_detection(fn, expected):
    assert is_async_callable(fn) is expected


def test_the_app_being_imported_owns_every_handler_registered_meanwhile():
    registry = Registry()
    with registry.importing_app("myapp"):
        registry.on("a")(without_wraps(plain_handler))  # wrapper's module: this test module
        registry.on("b")(functools.partial(plain_handler))
        with registry.importing_app("other"):
            registry.on("c")(PlainCallable())
        registry.on("d")(PlainCallable().method)
    registry.on("e")(coroutine_handler)  # no import under way: the module's package
    owners = {e: registry.handlers_for(e)[0].app for e in "abcde"}
    assert owners == {"a": "myapp", "b": "myapp", "c": "other", "d": "myapp", "e": "tests"}


def test_any_callable_registers_and_is_described():
    registry = Registry()
    for event, fn in {
        "partial": functools.partial(plain_handler, text="x"),
        "object": AsyncCallable(),
        "method": PlainCallable().method,
        "builtin": print,
    }.items():
        registry.add(event, fn, "app")
    assert describe(registry.handlers_for("partial")[0].fn) == "tests.test_registry.plain_handler"
    assert describe(registry.handlers_for("object")[0].fn) == "tests.test_registry.AsyncCallable"
    assert describe(PlainCallable().method) == "tests.test_registry.PlainCallable.method"
    assert registry.handlers_for("object")[0].is_async
    assert registry.handlers_for("builtin")[0].check_arguments(object(), (1, 2)) is None
    assert registry.has_async()


def test_async_handler_with_frappe_context_is_refused_by_name():
    registry = Registry()
    with pytest.raises(TypeError, match=r"coroutine_handler of 'x' \(app app\) is 'async def'"):
        registry.add("x", coroutine_handler, "app", frappe_context=True)
    with pytest.raises(TypeError, match="AsyncCallable"):
        registry.add("x", AsyncCallable(), "app", frappe_context=True)
    assert registry.handlers_for("x") == []


def test_not_callable_and_ownerless_are_refused():
    registry = Registry()
    with pytest.raises(TypeError, match="not callable"):
        registry.on("x")("not a function")

    def nameless(socket) -> None:
        return None

    nameless.__module__ = None
    with pytest.raises(ValueError, match="cannot tell which app owns"):
        registry.on("x")(nameless)


def test_types_are_checked_only_on_request():
    registry = Registry()
    loose = registry.add("loose", plain_handler, "app")
    strict = registry.add("strict", plain_handler, "app", check_types=True)
    assert loose.check_arguments(object(), (5,)) is None
    assert strict.check_arguments(object(), (5,)) == "argument 'text' must be str, got int"
    assert "missing a required argument" in loose.check_arguments(object(), ())
