"""Records that cross a process boundary as JSON come back equal to what was written."""

from __future__ import annotations

import json

from toolchain.records import Attempt, ExportRecord


def test_an_export_record_survives_its_json_round_trip():
    """A shared ONNX export's record is read back by the build's other targets: the manifest they write is the
    exporter's, attempts, rewrites and per-program phases included."""
    tried = [Attempt("dynamo", "export", "torch.export failed: data-dependent", None, detail="long text", sized=True)]
    phases = {"prefill": ExportRecord("dynamo", tried), "decode": ExportRecord("torchscript", [], rewrites=["LSTM as cells"])}
    record = ExportRecord.of_phases(phases)
    back = ExportRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert back.to_dict() == record.to_dict() and back.phases["decode"].rewrites == ["LSTM as cells"]
    assert back.tried[0].error == "torch.export failed: data-dependent" and back.tried[0].stage == "export"
    compiled = ExportRecord("non-strict", [], {"freezing": True})
    assert ExportRecord.from_dict(compiled.to_dict()) == compiled
