"""Export a small, randomly initialised HuggingFace BertModel with
torch.onnx.export, and record PyTorch's own outputs for fixed token ids, so
the Go side can check that onnxenc runs a real PyTorch export and gets
PyTorch's numbers.

Needs torch and transformers; downloads nothing. Writes, per variant, to
--out:  bert-<variant>.onnx (recent torch puts the weights beside it in
bert-<variant>.onnx.data), and expected.json with the ids, attention masks
and PyTorch's last_hidden_state mean/CLS pooling and pooler_output per
variant, plus the ONNX op types each file uses.

    python3 export_torch_bert.py --out /tmp/bert --vocab-size 47

Bigger models for timing comparisons: --hidden 768 --layers 12 --heads 12.
"""

import argparse
import json
import os
import sys
import traceback


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=47)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--max-positions", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--opsets", default="17", help="comma-separated opset versions to export")
    args = p.parse_args()

    import torch
    import transformers
    from transformers import BertConfig, BertModel

    os.makedirs(args.out, exist_ok=True)
    report = {"torch": torch.__version__, "transformers": transformers.__version__, "variants": {}}
    try:
        import onnx

        report["onnx"] = onnx.__version__
    except ImportError:
        onnx = None

    # Fixed ids (never 0 = [PAD] inside a sentence), right-padded like a
    # tokenizer batch would be.
    seqs = [[2, 5, 7, 9, 3], [2, 24, 25, 26, 27, 28, 29, 20, 3], [2, 12, 13, 14, 15, 16, 17, 18, 19, 5, 21, 3]]
    longest = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (longest - len(s)) for s in seqs], dtype=torch.int64)
    mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in seqs], dtype=torch.int64)
    types = torch.zeros_like(ids)
    report["sequences"] = seqs

    for attn in ("eager", "sdpa"):
        torch.manual_seed(args.seed)
        cfg = BertConfig(
            vocab_size=args.vocab_size,
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            intermediate_size=4 * args.hidden,
            max_position_embeddings=args.max_positions,
            attn_implementation=attn,
        )
        model = BertModel(cfg).eval()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden = out.last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * m).sum(1) / m.sum(1)
        expected = {
            "mean": mean.tolist(),
            "cls": hidden[:, 0, :].tolist(),
            "pooler": out.pooler_output.tolist(),
        }
        for opset in [int(v) for v in args.opsets.split(",")]:
            name = f"{attn}-opset{opset}"
            path = os.path.join(args.out, f"bert-{name}.onnx")
            entry = {"file": os.path.basename(path), "expected": expected}
            try:
                kwargs = dict(
                    input_names=["input_ids", "attention_mask", "token_type_ids"],
                    output_names=["last_hidden_state", "pooler_output"],
                    dynamic_axes={
                        n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "token_type_ids")
                    }
                    | {"last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}},
                    opset_version=opset,
                )
                # Whatever exporter this torch uses by default: that is what
                # users of this torch will hand us.
                torch.onnx.export(model, (ids, mask, types), path, **kwargs)
                if onnx is not None:
                    entry["ops"] = sorted({n.op_type for n in onnx.load(path).graph.node})
            except Exception:  # report and go on with the other variants
                entry["error"] = traceback.format_exc(limit=3)
            report["variants"][name] = entry
            print(name, "error" if "error" in entry else "ok", entry.get("ops", ""), file=sys.stderr)

    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
