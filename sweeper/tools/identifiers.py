"""``python -m sweeper.tools.identifiers [model=... data.token=... --count N]``: pick an identifier.

Lists short strings that the configured model's tokenizer encodes as a single, rarely used token (with
their ids), and warns when ``data.token`` splits into several tokens or is a common word.
"""

from __future__ import annotations

import argparse
import sys

from hydra import compose, initialize_config_dir

from lora_core.identifiers import identifier_warnings, rare_identifiers
from sweeper.app import CONF_DIR
from sweeper.config.spec import build_job
from sweeper.errors import user_errors


def main(argv: list[str] | None = None) -> int:
    """Print candidates and warnings; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m sweeper.tools.identifiers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--count", type=int, default=20, help="candidates to list")
    parser.add_argument("--max-length", type=int, default=3, help="longest candidate in characters")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m sweeper")
    args = parser.parse_args(argv)
    with user_errors():
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=args.overrides)
        from lora_core.models import load_tokenizer

        tokenizer = load_tokenizer(build_job(cfg).base_model())
    print(f"Identifier candidates for {cfg.model.path} (single rare tokens, rarest first):")
    for c in rare_identifiers(tokenizer, args.count, args.max_length):
        print(f"  {c.text:<6} token {c.token_id:>6}   vocabulary rank {c.rank:.2f}")
    warnings = identifier_warnings(tokenizer, cfg.data.token)
    for warning in warnings:
        print(f"warning: {warning}")
    if not warnings:
        print(f"data.token={cfg.data.token!r} is a single rare token: good.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
