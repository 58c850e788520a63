"""Write a local `.env` from `.env.example`, replacing each `change-me` with a random password.

Run by `make setup` only when `.env` does not exist, so a user's own values are never touched.
"""

import secrets
import sys
from pathlib import Path


def main(example: str, target: str) -> None:
    lines = []
    for line in Path(example).read_text().splitlines():
        if line.endswith("=change-me"):
            line = line.removesuffix("change-me") + secrets.token_urlsafe(18)
        lines.append(line)
    out = Path(target)
    out.write_text("\n".join(lines) + "\n")
    out.chmod(0o600)


if __name__ == "__main__":
    main(*sys.argv[1:3])
