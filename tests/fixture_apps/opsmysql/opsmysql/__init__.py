"""Test app whose realtime handlers drag in the mysqlclient driver (a stand-in for it)."""
