"""Fidelity against onnxruntime: the same QDQ model in onnxruntime and through this project.

* every Fire module's output, fed onnxruntime's own input to that module, against
  onnxruntime's output of it: the largest difference in LSB and the fraction identical;
* end to end, the logits' SQNR against onnxruntime's and the top-1 agreement, overall and
  over the inputs whose onnxruntime top-1 leads the runner-up by more than 2 LSB.
"""

from __future__ import annotations

import numpy as np

from spec.quant import sqnr_db

from .images import random_images
from .onnx_import import ImportedModel, UnsupportedModel


def ort_session(imported: ImportedModel, extra: list[str]):
    """onnxruntime on the model, with ``extra`` (int8) tensors added as outputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(imported.path)
    for name in extra:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT8,
                                                                     None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def compare(imported: ImportedModel, run_fires, run_network, *, inputs: int = 100,
            seed: int = 11, batch: int = 10, on_batch=None) -> dict:
    """``run_fires(name, layer, xs)`` and ``run_network(qnet, xs_q)`` run on the device;
    ``on_batch(done, inputs)`` after each batch of ``batch`` inputs (for progress)."""
    if inputs < 1:
        raise ValueError(f"inputs={inputs}: the comparison needs at least 1 input")
    if not imported.quantized:
        raise UnsupportedModel(f"{imported.path} is a float model: compare-onnx needs a QDQ "
                               "model (onnxruntime.quantization.quantize_static)")
    qnet = imported.qnet
    names = []  # one Fire's output is often the next one's input: each tensor once
    for fin, fout in imported.fire_tensors.values():
        for t in (fin, fout):
            if imported.quantized_names[t] not in names:
                names.append(imported.quantized_names[t])
    sess = ort_session(imported, names)
    wanted = [sess.get_outputs()[0].name] + names
    h, w = imported.input_size
    images = random_images(inputs, h, seed) if h == w else None
    if images is None:
        rng = np.random.default_rng(seed)
        images = [rng.standard_normal((h, w, 3)).astype(np.float32) for _ in range(inputs)]
    diffs, identical, total = [], 0, 0
    logits_ort, logits_ours = [], []
    fire_names = list(imported.fire_tensors)
    s_out, _ = qnet.scales[qnet.net.layers[-1].name]
    for start in range(0, inputs, batch):
        chunk = images[start:start + batch]
        ort_out = [dict(zip(wanted, sess.run(wanted, {sess.get_inputs()[0].name:
                                                      im.transpose(2, 0, 1)[None]}),
                            strict=True)) for im in chunk]
        logits_ort += [o[wanted[0]][0] for o in ort_out]
        for name in fire_names:
            fin, fout = (imported.quantized_names[t] for t in imported.fire_tensors[name])
            xs = [o[fin][0].transpose(1, 2, 0).astype(np.int64) for o in ort_out]
            want = [o[fout][0].transpose(1, 2, 0).astype(np.int64) for o in ort_out]
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
    return {
        "model": imported.path, "inputs": inputs, "input_size": [h, w],
        "fire_max_lsb": max(diffs), "fire_identical_fraction": identical / total,
        "fire_values": total,
        "logits_sqnr_db": sqnr_db(ref, got),
        "top1_agreement": float(np.mean(top_ref == top_got)),
        "top1_agreement_confident": float(np.mean((top_ref == top_got)[confident]))
        if confident.any() else None,
        "confident_inputs": int(confident.sum()),
    }

