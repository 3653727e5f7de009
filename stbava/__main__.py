"""``python -m stbava`` works exactly like the ``stbava`` command (also under torchrun)."""

from stbava.cli import main

if __name__ == "__main__":
    main()
