"""``clipguard studio``: serve the policy studio, a web app for policy authors."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from consumers.cli.common import (
    DEFAULT_BOOTSTRAP,
    add_banks_option,
    add_bootstrap_servers,
    add_command,
)

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  clipguard studio --policies pipeline/policies/data/demo
      then open http://127.0.0.1:8600/ in a browser
  clipguard studio --policies policies/ --model ViT-B/32 --incidents flags.jsonl
  clipguard studio --policies policies/ --flags-topic clipguard.flags --store store/ \
      --banks banks/
      the review queue fed by the workers' flag events as they come, and by what the
      policies find in stored traffic
  CLIPGUARD_STUDIO_TOKEN=... clipguard studio --policies policies/ --host 0.0.0.0
      bound elsewhere than this machine, it asks for the token: open /?token=...

The policy files stay the source of truth: every change is written to them as a new version
and recorded in the audit log (DATA/audit.jsonl). Uploads, thumbnails, version history and
review labels are kept in the data folder (default: .clipguard-studio beside the policies).
"""


def add_parser(subparsers: Any) -> None:
    """Add ``clipguard studio``."""
    studio = add_command(
        subparsers,
        "studio",
        help="serve the policy studio (a web app for policy authors)",
        description="A web app to write, try, tune, review and promote policies. It listens "
        "on 127.0.0.1 unless told otherwise; bound elsewhere it requires a token.",
        epilog=_EPILOG,
    )
    studio.add_argument("--policies", required=True, metavar="DIR", help="policy folder")
    studio.add_argument(
        "--model",
        metavar="NAME",
        help="score with this model (default: the model each policy names, else the demo model)",
    )
    studio.add_argument(
        "--precision",
        choices=("fp32", "auto", "int8", "bf16", "fp16"),
        default="fp32",
        help="image encoder precision for uploads: fp32 (default) scores exactly as `clipguard "
        "policy test`; auto or int8 score as a worker at that precision would",
    )
    studio.add_argument("--data", metavar="DIR", help="the studio's own files")
    studio.add_argument("--incidents", metavar="FILE", help="flag events (JSON lines) to review")
    studio.add_argument(
        "--flags-topic",
        metavar="TOPIC",
        help="read this flags topic (e.g. clipguard.flags) into the review queue as it grows",
    )
    add_bootstrap_servers(
        studio,
        default=DEFAULT_BOOTSTRAP,
        metavar="HOST:PORT",
        help="Kafka, for --flags-topic (default: %(default)s)",
    )
    studio.add_argument("--store", metavar="DIR", help="stored frame embeddings (optional)")
    add_banks_option(
        studio,
        help="hash bank files (*.bank.tsv) or folders: what hash policies (kind: hash) match "
        "(their entry counts on the Policies page, their backtest)",
    )
    studio.add_argument(
        "--prepare-store",
        action="store_true",
        help="with --store: score the stored traffic and backtest the policies before serving "
        "(a longer start; every page whole from the first request), not in the background",
    )
    studio.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    studio.add_argument("--port", type=int, default=8600, help="port (default: %(default)s)")
    studio.add_argument(
        "--token",
        default=os.environ.get("CLIPGUARD_STUDIO_TOKEN"),
        help="access token (default: $CLIPGUARD_STUDIO_TOKEN); required off localhost",
    )
    studio.add_argument(
        "--behind-proxy",
        action="store_true",
        help="an authenticating reverse proxy is the only way in (it names the user in "
        "X-Forwarded-User); no token needed",
    )
    studio.add_argument(
        "--max-upload-mb", type=int, default=50, help="largest upload (default: %(default)s)"
    )
    studio.set_defaults(func=_studio)


def _studio(args: argparse.Namespace) -> int:
    import uvicorn

    from consumers.studio import StudioConfig, create_app

    policies = Path(args.policies)
    config = StudioConfig(
        policies_dir=policies,
        data_dir=Path(args.data) if args.data else policies / ".clipguard-studio",
        model=args.model,
        host=args.host,
        port=args.port,
        token=args.token,
        behind_proxy=args.behind_proxy,
        incidents=Path(args.incidents) if args.incidents else None,
        flags_topic=args.flags_topic,
        bootstrap_servers=args.bootstrap_servers,
        store=Path(args.store) if args.store else None,
        prepare_store=args.prepare_store,
        banks=tuple(Path(p) for p in args.banks or ()),
        max_upload_bytes=args.max_upload_mb * 1024**2,
        precision=args.precision,
    )
    app = create_app(config, say=lambda line: print(f"studio: {line}", flush=True))
    where = f"http://{args.host}:{args.port}/"
    print(f"clipguard studio on {where}" + ("?token=..." if config.token else ""), flush=True)
    if config.store is not None:
        print("studio: preparing before serving (the first start takes longest)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
