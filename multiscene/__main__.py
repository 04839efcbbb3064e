from __future__ import annotations

from multiscene.cli import main

if __name__ == "__main__":
    main()
