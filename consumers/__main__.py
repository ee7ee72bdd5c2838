"""``python -m consumers``: the ``clipguard`` command line."""

from consumers.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
