"""Kept for tools and pip versions that still look for setup.py; metadata lives in setup.cfg."""

from setuptools import setup

setup()
