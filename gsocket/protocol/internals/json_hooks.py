"""The C JSON encoder of the standard library, built once and called directly.

``json.dumps`` with any argument builds a ``JSONEncoder`` and its C encoder per call (2 % of a
connect's CPU, more per published event); ``json.encoder.c_make_encoder`` builds one to keep.
Its arguments are positional and undocumented: verified on CPython 3.10 to 3.12 (the
``markers``, ``default``, ``encoder``, ``indent``, ``key_separator``, ``item_separator``,
``sort_keys``, ``skipkeys`` and ``allow_nan`` of ``json.encoder.JSONEncoder.iterencode``); an
interpreter without it (PyPy) gets ``JSONEncoder.encode``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def compact_encoder(check_circular: bool, finite: Callable[[Any], Any]) -> Callable[[Any], str]:
    """Compact ASCII JSON (python-socketio's ``json.dumps(data, separators=(",", ":"))``)
    from an encoder built once (``json.dumps`` with arguments builds one per call); a value
    with a non-finite float is encoded again with those written ``null``."""
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:
        plain = json.JSONEncoder(
            separators=(",", ":"), allow_nan=False, check_circular=check_circular
        ).encode

        def encode_plain(value: Any) -> str:
            try:
                return plain(value)
            except ValueError as e:
                if "Circular" in str(e):
                    raise
                return plain(finite(value))

        return encode_plain
    markers: dict[int, Any] | None = {} if check_circular else None
    chunks = make(
        markers,
        json.JSONEncoder().default,  # raises TypeError naming the type, as json.dumps does
        json.encoder.encode_basestring_ascii,  # type: ignore[attr-defined]
        None,
        ":",
        ",",
        False,
        False,
        False,  # allow_nan: NaN and Infinity raise, and are written null below
    )

    def encode_c(value: Any) -> str:
        try:
            return "".join(chunks(value, 0))
        except ValueError as e:
            if markers is not None:
                markers.clear()  # an encoding that failed half-way leaves containers marked
            if "Circular" in str(e):
                raise
            return "".join(chunks(finite(value), 0))
        except BaseException:
            if markers is not None:
                markers.clear()
            raise

    return encode_c
