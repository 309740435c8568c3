"""Fidelity against onnxruntime: the same quantized model in onnxruntime and through this
project.

* every Fire module's output, fed onnxruntime's own input to that module, against
  onnxruntime's output of it: the largest difference in LSB and the fraction identical;
* end to end, the logits' SQNR against onnxruntime's and the top-1 agreement, overall and
  over the inputs whose onnxruntime top-1 leads the runner-up by more than 2 LSB;
* for a QDQ model, how far onnxruntime's own integer kernels (its default session, which
  fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv and the like) are from
  its QDQ reference (the same graph with every optimization off: float operators between
  exact DequantizeLinear and QuantizeLinear), on the same inputs: the yardstick the first
  two are read against. A QOperator model has only the integer kernels.
"""

from __future__ import annotations

import numpy as np

from spec.quant import sqnr_db

from .images import random_images
from .onnx_import import ImportedModel, UnsupportedModel


def ort_session(imported: ImportedModel, extra: list[str], *, reference: bool = False):
    """onnxruntime on the model, with ``extra`` (integer) tensors added as outputs;
    ``reference``: every graph optimization off (the QDQ graph run as written)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(imported.path)
    types = {"int8": onnx.TensorProto.INT8, "uint8": onnx.TensorProto.UINT8}
    for name in extra:
        model.graph.output.append(onnx.helper.make_tensor_value_info(
            name, types[imported.quantized_dtypes.get(name, "int8")], None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if reference:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _run_ort(sess, imported: ImportedModel, wanted: list[str], chunk: list[np.ndarray]):
    """One dict of ``wanted`` outputs per image (HWC) of ``chunk``, in batches the model's
    input takes (its fixed batch size, padded, or all at once)."""
    batch = imported.batch or len(chunk)
    results = []
    for start in range(0, len(chunk), batch):
        part = chunk[start:start + batch]
        x = np.stack([im.transpose(2, 0, 1) for im in part]).astype(np.float32)
        if len(part) < batch:
            x = np.concatenate([x, np.repeat(x[-1:], batch - len(part), axis=0)])
        outs = sess.run(wanted, {imported.input_name: x})
        results += [{name: out[k] for name, out in zip(wanted, outs, strict=True)}
                    for k in range(len(part))]
    return results


def comparison_images(imported: ImportedModel, inputs: int, seed: int) -> list[np.ndarray]:
    """``inputs`` random HWC images at the model's input size."""
    h, w = imported.input_size
    if h == w:
        return random_images(inputs, h, seed)
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((h, w, 3)).astype(np.float32) for _ in range(inputs)]


def compare(imported: ImportedModel, run_fires, run_network, *, inputs: int = 100,
            images: list[np.ndarray] | None = None, seed: int = 11, batch: int = 10,
            on_batch=None) -> dict:
    """``run_fires(name, layer, xs)`` and ``run_network(qnet, xs_q)`` run on the device;
    ``images`` (HWC float) are the inputs, else ``inputs`` random ones; ``on_batch(done,
    inputs)`` after each batch of ``batch`` inputs (for progress)."""
    if images is None:
        if inputs < 1:
            raise ValueError(f"inputs={inputs}: the comparison needs at least 1 input")
        images = comparison_images(imported, inputs, seed)
    inputs = len(images)
    if not imported.quantized:
        raise UnsupportedModel(f"{imported.path} is a float model: compare-onnx needs a QDQ "
                               "or QOperator model (onnxruntime.quantization.quantize_static)")
    qnet = imported.qnet
    names = []  # one Fire's output is often the next one's input: each tensor once
    for fin, fout in imported.fire_tensors.values():
        for t in (fin, fout):
            if imported.quantized_names[t] not in names:
                names.append(imported.quantized_names[t])
    sess = ort_session(imported, names)
    wanted = [sess.get_outputs()[0].name] + names
    reference = ort_session(imported, names, reference=True) \
        if imported.qformat == "QDQ" else None
    h, w = imported.input_size
    diffs, identical, total = [], 0, 0
    logits_ort, logits_ours, logits_ref, kernel_diffs = [], [], [], []
    fire_names = list(imported.fire_tensors)
    s_out, _ = qnet.scales[qnet.net.layers[-1].name]
    for start in range(0, inputs, batch):
        chunk = images[start:start + batch]
        ort_out = _run_ort(sess, imported, wanted, chunk)
        logits_ort += [o[wanted[0]].reshape(-1) for o in ort_out]
        if reference is not None:
            ref_out = _run_ort(reference, imported, wanted, chunk)
            logits_ref += [o[wanted[0]].reshape(-1) for o in ref_out]
            for a, b in zip(ort_out, ref_out, strict=True):
                kernel_diffs.append(max(int(np.abs(imported.to_int8(n, a[n])
                                                   - imported.to_int8(n, b[n])).max())
                                        for n in names))
        for name in fire_names:
            fin, fout = (imported.quantized_names[t] for t in imported.fire_tensors[name])
            xs = [imported.to_int8(fin, o[fin]).transpose(1, 2, 0) for o in ort_out]
            want = [imported.to_int8(fout, o[fout]).transpose(1, 2, 0) for o in ort_out]
            got = run_fires(name, qnet.layers[name], xs)
            for g, t in zip(got, want, strict=True):
                d = np.abs(g - t)
                diffs.append(int(d.max()))
                identical += int((d == 0).sum())
                total += d.size
        outs = run_network(qnet, [qnet.quantize_input(im) for im in chunk])
        logits_ours += [qnet.dequantize_output(o) for o in outs]
        if on_batch is not None:
            on_batch(len(logits_ours), inputs)
    ref, got = np.array(logits_ort), np.array(logits_ours)
    top_ref, top_got = ref.argmax(1), got.argmax(1)
    ordered = np.sort(ref, axis=1)
    margin = (ordered[:, -1] - ordered[:, -2]) / s_out
    confident = margin > 2
    result = {
        "model": imported.path, "format": imported.qformat, "inputs": inputs,
        "input_size": [h, w],
        "fire_max_lsb": max(diffs), "fire_identical_fraction": identical / total,
        "fire_values": total,
        "logits_sqnr_db": sqnr_db(ref, got),
        "top1_agreement": float(np.mean(top_ref == top_got)),
        "top1_agreement_confident": float(np.mean((top_ref == top_got)[confident]))
        if confident.any() else None,
        "confident_inputs": int(confident.sum()),
        "ort_kernels_vs_reference": None,
    }
    if reference is not None:
        qdq = np.array(logits_ref)
        result["ort_kernels_vs_reference"] = {
            "fire_max_lsb": max(kernel_diffs),  # end to end: each run whole, not fed alike
            "logits_sqnr_db": sqnr_db(qdq, ref),
            "top1_agreement": float(np.mean(qdq.argmax(1) == top_ref)),
            "ours_logits_sqnr_db": sqnr_db(qdq, got),
            "ours_top1_agreement": float(np.mean(qdq.argmax(1) == top_got)),
        }
    return result
