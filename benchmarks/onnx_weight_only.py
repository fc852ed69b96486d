"""Weight-only int8 (ONNX Runtime ``MatMulNBits``, 8 bits) against the shipped exports, side by side
in one process: closeness to the float export, whether a text's embedding depends on the batch it
is encoded in, and single short-query latency.

The float export of the bundled encoder (``OnnxEncoder(quantize=False)``, exported into the cache on
first use) is quantised with ``MatMulNBitsQuantizer`` at each block size (accuracy level 4:
activations quantised per row, so rows do not share a scale); the dynamic int8 export is the one
``encoder_runtime: onnx`` ships.

Run: ``python benchmarks/onnx_weight_only.py [--blocks 32 128]``
Writes ``benchmarks/results/onnx_weight_only.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from moe_agents.routing.onnx_encoder import OnnxEncoder, _session

OUT = Path(__file__).parent / "results"
TEXTS = [
    "ok",
    "hi there",
    "what's the weather like",
    "Write a Python function that merges two sorted lists",
    "Who discovered penicillin and when?",
    "Do you think machines can be conscious?",
    "If 3 apples cost $1.20, how much do 10 apples cost? Explain step by step with units.",
]


def weight_only(source: Path, target: Path, block: int) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return target


def measure(enc: OnnxEncoder, reference: np.ndarray, rounds: int = 5) -> dict[str, float]:
    batch = enc.encode(TEXTS)
    alone = np.stack([enc.encode([t])[0] for t in TEXTS])
    times = []
    for _ in range(rounds):
        for text in TEXTS:
            start = time.perf_counter()
            enc.encode([text])
            times.append(time.perf_counter() - start)
    return {
        "cosine_to_float_min": float((batch * reference).sum(1).min()),
        "batch_vs_alone_max_abs": float(np.abs(batch - alone).max()),
        "short_p50_ms": float(np.median(times) * 1000),
    }


def main(blocks: list[int], out: Path) -> None:
    fp32 = OnnxEncoder(quantize=False)
    fp32.load()
    assert fp32.model_file is not None
    reference = fp32.encode(TEXTS)
    int8 = OnnxEncoder()
    int8.load()
    rows = {"float (onnx-fp32)": measure(fp32, reference), "dynamic int8 (onnx)": measure(int8, reference)}
    with tempfile.TemporaryDirectory() as tmp:
        for block in blocks:
            enc = OnnxEncoder(quantize=False)
            enc.load()
            enc._session = _session(weight_only(fp32.model_file, Path(tmp) / f"w8-{block}.onnx", block), 1)
            rows[f"weight-only int8, block {block}"] = measure(enc, reference)
    table = Table(title="ONNX exports of the bundled encoder, one process, one intra-op thread")
    for column in ("export", "cosine to float (min)", "batch vs alone (max abs)", "short p50 ms"):
        table.add_column(column, justify="right" if column != "export" else "left")
    for name, r in rows.items():
        table.add_row(
            name,
            f"{r['cosine_to_float_min']:.4f}",
            f"{r['batch_vs_alone_max_abs']:.1e}",
            f"{r['short_p50_ms']:.1f}",
        )
    Console().print(table)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "onnx_weight_only.json"
    path.write_text(json.dumps(rows, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    main(args.blocks, args.out)
