"""Train a small federation in Flower's simulation engine and audit what each client leaks.

    .venv/bin/python examples/flower_audit/run.py --out runs/flower-audit

writes runs/flower-audit/report.html (one row per client and round, with its reconstructions),
audit.json, and one gifd run per attacked client (round_RRR/client_ID, with its own report and
the update the server received).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flower_audit.simulation import DEFAULT_SETTINGS, run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="runs/flower-audit", help="audit directory (default runs/flower-audit)"
    )
    parser.add_argument("--clients", type=int, default=2, help="simulated clients (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="FedAvg rounds (default 2)")
    parser.add_argument(
        "--audit-rounds", type=lambda t: [int(v) for v in t.split(",")], help="rounds to attack (default all)"
    )
    parser.add_argument("--images-per-client", type=int, default=DEFAULT_SETTINGS["images-per-client"])
    parser.add_argument(
        "--victim", default=DEFAULT_SETTINGS["victim"], help="model the federation trains (default lenet)"
    )
    parser.add_argument("--resolution", type=int, default=DEFAULT_SETTINGS["resolution"])
    parser.add_argument("--lr", type=float, default=DEFAULT_SETTINGS["lr"], help="clients' learning rate")
    parser.add_argument("--local-epochs", type=int, default=DEFAULT_SETTINGS["local-epochs"])
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_SETTINGS["batch-size"], help="clients' mini-batch size"
    )
    parser.add_argument("--client-normalization", default="imagenet", help="what the clients normalise with")
    parser.add_argument(
        "--normalization", default="imagenet", help="what the audit assumes they normalise with"
    )
    parser.add_argument("--attacks", default="gifd,ig", help="comma-separated gifd attacks (default gifd,ig)")
    parser.add_argument("--steps", type=int, default=400, help="attack steps per restart (default 400)")
    parser.add_argument("--restarts", type=int, default=2, help="attack restarts (default 2)")
    parser.add_argument("--api", choices=["message", "legacy"], default="message", help="Flower strategy API")
    parser.add_argument("--device", default="auto", help="attack device: cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = {
        "victim": args.victim,
        "resolution": args.resolution,
        "images-per-client": args.images_per_client,
        "lr": args.lr,
        "local-epochs": args.local_epochs,
        "batch-size": args.batch_size,
        "normalization": args.client_normalization,
    }
    audit = {
        "attacks": [a.strip() for a in args.attacks.split(",") if a.strip()],
        "steps": args.steps,
        "restarts": args.restarts,
        "rounds": args.audit_rounds,
        "normalization": args.normalization,
        "device": args.device,
        "seed": args.seed,
    }
    start = time.time()
    result = run(
        clients=args.clients,
        rounds=args.rounds,
        settings=settings,
        audit=audit,
        out=args.out,
        api=args.api,
        progress=True,
    )
    print(f"\naudited {len(result.audit)} client updates in {time.time() - start:.0f} s")
    for record in result.audit:
        scores = ", ".join(
            f"{name} PSNR {summary['psnr']:.2f} dB"
            for name, summary in (record.get("attacks") or {}).items()
            if summary.get("psnr") is not None
        )
        print(
            f"round {record['round']} client {record['client']}: {record['status']} {scores} {record.get('reason', '')}"
        )
        for warning in record["warnings"]:
            print(f"    note: {warning}")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
