"""Kept for tools and pip versions that still look for setup.py; metadata lives in setup.cfg.

One thing setup.cfg cannot say: ``gsocket-frappe-helpers.pth`` must land at the top of
site-packages (not inside the package), because only ``.pth`` files there run at interpreter
start; it is what gives Frappe v15's ``frappe.realtime`` the documented publish helpers in the
web process and workers (see ``gsocket/contract/frappe_hook.py``).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "gsocket-frappe-helpers.pth"


class BuildWithPth(build_py):
    """Build the package as usual, plus the ``.pth`` file beside it."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(Path(__file__).parent / PTH), str(Path(self.build_lib) / PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


setup(cmdclass={"build_py": BuildWithPth})
