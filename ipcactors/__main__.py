"""``python -m ipcactors``: the ``ipcactors`` command (see ``_cli`` and docs/cli.md)."""

from ._cli import main_exit

if __name__ == "__main__":
    main_exit()
