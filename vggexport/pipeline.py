"""``vggexport pipeline``: train -> export -> verify -> report -> serve, skipping stages that are up to date.

A stage is up to date when the manifest records the same fingerprint of its
inputs (options and input checksums) and its outputs still match their checksums.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vggexport.store import paths
from vggexport.errors import VggExportError
from vggexport.names import model_folder_name
from vggexport.store.manifest import check_artifact, read_manifest, update_manifest
from vggexport.console import console
from vggexport.training import TrainConfig

STAGES = ("train", "export", "verify", "report", "serve")


@dataclass(frozen=True)
class PipelineConfig:
    train: TrainConfig
    serve: bool = True
    force: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    provider: str = "auto"
    sign_key: str | None = None  # an EC private key PEM: sign what verify passed, after the verify stage


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def recorded_sha(folder: Path, name: str) -> str | None:
    entry = read_manifest(folder).get("artifacts", {}).get(name)
    return entry["sha256"] if entry else None


class Pipeline:
    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        train = config.train
        self.folder = paths.model_dir(train.artifacts, model_folder_name(train.name, train.cfg, train.batch_norm))

    def up_to_date(self, stage: str, inputs: str, outputs: list[str]) -> bool:
        if self.config.force:
            return False
        recorded = read_manifest(self.folder).get("stages", {}).get(stage, {})
        if recorded.get("inputs") != inputs or not all((self.folder / o).is_file() for o in outputs):
            return False
        for name in outputs:
            check_artifact(self.folder / name)  # a tampered output is an error, not a silent re-run
        return True

    def record(self, stage: str, inputs: str) -> None:
        stages = read_manifest(self.folder).get("stages", {})
        stages[stage] = {"inputs": inputs, "completed_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        update_manifest(self.folder, stages=stages)

    def stage(self, number: int, name: str, inputs: str, outputs: list[str], run: Callable[[], None]) -> None:
        console.rule(f"[bold]stage {number}/{len(STAGES)}: {name}")
        if self.up_to_date(name, inputs, outputs):
            console.print(f"{name}: up to date (inputs unchanged), skipped; --force re-runs it")
            return
        run()
        self.record(name, inputs)

    def train_inputs(self) -> str:
        from vggexport.data.dataset import announce
        from vggexport.data.load import load_dataset
        from vggexport.store.manifest import dataset_identity

        options = {k: v for k, v in asdict(self.config.train).items() if k not in ("artifacts", "resume")}
        data = load_dataset(self.config.train.dataset, self.config.train.data_dir,
                            image_size=self.config.train.image_size or 32)
        announce(data, "train and test splits")
        return fingerprint(options, dataset_identity(data.name, data.files))

    def run(self) -> None:
        from vggexport.export.spec import ExportSpec
        from vggexport.training import train
        from vggexport.verify.command import VerifyOptions, verify
        from vggexport.export.command import ModelSelection, export_all

        chosen = ModelSelection(cfg=self.config.train.cfg, batch_norm=self.config.train.batch_norm,
                                artifacts=self.config.train.artifacts, model_name=self.config.train.name)
        spec = ExportSpec()
        self.stage(1, "train", self.train_inputs(), [paths.BEST], lambda: train(self.config.train))
        best = recorded_sha(self.folder, paths.BEST)
        exported = [paths.ONNX, paths.ONNX_PREPROCESSING, paths.TORCHSCRIPT]
        self.stage(2, "export", fingerprint(best, asdict(spec)), exported, lambda: export_all(chosen, spec))
        exports = [recorded_sha(self.folder, n) for n in (paths.BEST, *exported)]

        def run_verify() -> None:
            from vggexport.verify.table import print_parity

            options = VerifyOptions(data_dir=self.config.train.data_dir)
            report = verify(self.folder / paths.BEST, self.folder, spec, options)
            print_parity(report)
            if not report.passed:
                raise VggExportError(f"verification failed: {report.summary().splitlines()[0]}")

        self.stage(3, "verify", fingerprint(exports, asdict(spec)), [paths.PARITY], run_verify)
        verified = [*exports, *(recorded_sha(self.folder, n) for n in (paths.PARITY, paths.METRICS)),
                    self.sign()]
        self.stage(4, "report", fingerprint(verified), [paths.REPORT], self.report)
        console.rule(f"[bold]stage 5/{len(STAGES)}: serve")
        self.serve() if self.config.serve else self.smoke_test()

    def sign(self) -> dict[str, Any] | None:
        """Sign after verify (every run: verify may have been skipped, the key may be new); what it signed, for
        the report's inputs. ECDSA signatures differ each time, so the bundle's own bytes are left out."""
        if not self.config.sign_key:
            return None
        from vggexport.store.signing import sign_model_folder

        result = sign_model_folder(self.folder, self.config.sign_key)
        console.print(f"signed {', '.join(sorted(result.signed))} into {result.path} "
                      f"(key sha256:{result.fingerprint}); not signed: {', '.join(result.unsigned) or '(none)'}")
        return {"key": result.fingerprint, "files": result.signed}

    def report(self) -> None:
        from vggexport.report import ReportConfig, build_report

        written = build_report(ReportConfig(folder=self.folder, data_dir=self.config.train.data_dir))
        console.print(f"wrote {written}")

    def serve(self) -> None:
        from vggexport.serve.app import serve_forever
        from vggexport.serve.service import ServeConfig

        config = ServeConfig(model=str(self.folder / paths.ONNX), provider=self.config.provider, gate="refuse")
        serve_forever(config, host=self.config.host, port=self.config.port)

    def smoke_test(self) -> None:
        """Start a short-lived server on a free loopback port, classify one input, stop it."""
        from vggexport.serve.smoke import smoke_request

        name, top = smoke_request(self.folder / paths.ONNX, provider=self.config.provider)
        console.print(f"smoke request to a short-lived server: {name} answered {top['label']!r} "
                      f"({top['probability']:.3f}); not serving on (--no-serve)")
