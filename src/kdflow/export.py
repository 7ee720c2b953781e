"""Export for deployment (ONNX, TorchScript) and the check that ONNX says what PyTorch says."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from kdflow.cost import batch_of
from kdflow.errors import KdflowError
from kdflow.io import atomic_write_bytes, ensure_dir, tmp_sibling
from kdflow.metrics import predict

PARITY_TOL = 1e-4  # max |logit difference| allowed between ONNX and PyTorch


def _export_example(example: Tensor) -> Tensor:
    # A batch of 1 lets torch.export specialise the batch axis to 1: export with 2 or more.
    return example if len(example) >= 2 else batch_of(example, 2)


def export_onnx(model: nn.Module, example: Tensor, path: str | Path) -> str:
    """Export to ONNX with a dynamic batch axis; returns the exporter used.

    Tries the torch.export-based exporter first and falls back to the TorchScript one. The
    file appears only once complete (written to a temporary name, then renamed).
    """
    import onnx

    path = Path(path)
    ensure_dir(path.parent)
    model = model.cpu().eval()
    example = _export_example(example.cpu())
    tmp = tmp_sibling(path)
    names = {"input_names": ["input"], "output_names": ["logits"]}
    exporter = "dynamo"
    try:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    dynamo=True,
                    verbose=False,
                    external_data=False,
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                    **names,
                )
        except Exception:
            exporter = "torchscript"
            tmp.unlink(missing_ok=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    dynamo=False,
                    opset_version=17,
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    **names,
                )
        strip_onnx_debug(tmp)
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KdflowError(f"could not export the model to ONNX ({msg[:300]})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return exporter


def strip_onnx_debug(path: Path) -> None:
    """Drop per-node debug records (stack traces with this machine's absolute source paths),
    so the same model exports to the same bytes in any folder: dvc.lock's hash then holds."""
    import onnx

    model = onnx.load(str(path))
    graphs = [model.graph, *(f for f in model.functions)]
    for g in graphs:
        for node in g.node:
            node.doc_string = ""
            del node.metadata_props[:]
    onnx.save(model, str(path))


def _without_debug_records(archive: bytes) -> bytes:
    """A TorchScript archive without its ``*.debug_pkl`` source maps (absolute paths of this
    checkout) and with a serialization id computed from what is left: byte-reproducible."""
    reader = torch._C.PyTorchFileReader(io.BytesIO(archive))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name in reader.get_all_records():
        if name.endswith(".debug_pkl") or name == ".data/serialization_id":
            continue
        data = reader.get_record(name)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return out.getvalue()


def export_torchscript(model: nn.Module, example: Tensor, path: str | Path) -> Path:
    """Trace the model to TorchScript (loadable from C++ without kdflow), written atomically."""
    model = model.cpu().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit is deprecated upstream but still the C++ format
        traced = torch.jit.trace(model, _export_example(example.cpu()))
        torch.jit.save(traced, buf)
    return atomic_write_bytes(path, _without_debug_records(buf.getvalue()))


def onnx_logits(onnx_path: str | Path, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Run an exported model with onnxruntime on the CPU, batch by batch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = [
        torch.from_numpy(sess.run(None, {name: x[i : i + batch_size].numpy()})[0])
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out)


def onnx_parity(
    onnx_path: str | Path, model: nn.Module, x: Tensor, batch_size: int = 1024
) -> dict[str, float]:
    """How far the ONNX file's logits are from PyTorch's on all of ``x``."""
    ref = predict(model.cpu(), x, batch_size=batch_size)
    got = onnx_logits(onnx_path, x, batch_size).float()
    if got.shape != ref.shape:
        raise KdflowError(
            f"ONNX model {onnx_path} returns logits of shape {tuple(got.shape)}, "
            f"PyTorch {tuple(ref.shape)}"
        )
    same = got.argmax(1) == ref.argmax(1)
    return {
        "max_abs_diff": float((got - ref).abs().max()) if len(x) else 0.0,
        "agreement": float(same.float().mean()) if len(x) else 1.0,
        "mismatches": int((~same).sum()),
        "images": len(x),
    }
