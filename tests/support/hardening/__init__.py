"""Tools of gsocket's hardening runs (issue 8): a server that reports its own state, raw
Engine.IO clients, the fuzzer's packet generator.  Used by ``scripts/*.py`` and by the fast
versions in ``tests/test_hardening_*.py``; see RELIABILITY.md."""
