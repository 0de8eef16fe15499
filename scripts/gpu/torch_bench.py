#!/usr/bin/env python3
"""The baseline a user would pick instead of infergate's engine: PyTorch.

Builds a BERT-shaped encoder (MiniLM shape by default) from a BertConfig
with seeded random weights, measures its GPU throughput and latency per
batch size (fp32, no_grad, CUDA-synchronised), and exports the same model
to ONNX together with a WordPiece tokenizer.json, so that infergate's engine
can serve the identical network through onnx-gomlx for a side-by-side.

Writes under --out: torch_bench.json, torch_bench.csv, encoder.onnx,
tokenizer.json (plus vocab.txt and the tokenizer's other files).
Each part is independent: a failed export still leaves the measurements.
"""

import argparse
import csv
import json
import os
import platform
import sys
import time
import traceback


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for results and the exported model")
    p.add_argument("--batch-sizes", default="1,8,32,64,128,256")
    p.add_argument("--seq-len", type=int, default=32, help="tokens per sequence, padding included")
    p.add_argument("--window", type=float, default=3.0, help="seconds measured per batch size")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--max-positions", type=int, default=512)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--skip-export", action="store_true")
    return p.parse_args()


# Word pieces for the generated vocabulary: enough real English that the
# bench's sentences tokenize into words rather than single characters, so
# sequence lengths resemble a real BERT vocabulary's.
COMMON_WORDS = """
the of and to a in is it you that he was for on are with as i his they be at one
have this from or had by hot word but what some we can out other were all there when
up use your how said an each she which do their time if will way about many then them
write would like so these her long make thing see him two has look more day could go
come did number sound no most people my over know water than call first who may down
side been now find any new work part take get place made live where after back little
only round man year came show every good me give our under name very through just form
sentence great think say help low line differ turn cause much mean before move right boy
old too same tell does set three want air well also play small end put home read hand
port large spell add even land here must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self
earth father head stand own page should country found answer school grow study still learn
plant cover food sun four between state keep eye never last let thought city tree cross
farm hard start might story saw far sea draw left late run don't while press close night
real life few north open seem together next white children begin got walk example ease
paper group always music those both mark often letter until mile river car feet care second
book carry took science eat room friend began idea fish mountain stop once base hear horse
cut sure watch color face wood main enough plain girl usual young ready above ever red list
though feel talk bird soon body dog family direct pose leave song measure door product black
short numeral class wind question happen complete ship area half rock order fire south problem
piece told knew pass since top whole king space heard best hour better true during hundred
five remember step early hold west ground interest reach fast verb sing listen six table travel
less morning ten simple several vowel toward war lay against pattern slow center love person
money serve appear road map rain rule govern pull cold notice voice unit power town fine certain
fly fall lead cry dark machine note wait plan figure star box noun field rest correct able pound
done beauty drive stood contain front teach week final gave green oh quick develop ocean warm
free minute strong special mind behind clear tail produce fact street inch multiply nothing course
stay wheel full force blue object decide surface deep moon island foot system busy test record
boat common gold possible plane stead dry wonder laugh thousand ago ran check game shape equate
miss brought heat snow tire bring yes distant fill east paint language among weather price
cache model request response server latency batch token embedding vector query search engine
""".split()


def build_vocab(path):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127)]
    pieces = specials + chars + ["##" + c for c in chars if c.isalnum()]
    seen = set(pieces)
    for w in COMMON_WORDS:
        w = w.lower()
        if w not in seen:
            seen.add(w)
            pieces.append(w)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(pieces) + "\n")
    return len(pieces)


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[k]


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    report = {"tool": "pytorch", "python": platform.python_version(), "seq_len": args.seq_len,
              "dtype": "float32", "errors": []}

    import torch
    import transformers
    from transformers import BertConfig, BertModel
    try:
        from transformers import BertTokenizerFast as tokenizer_cls
    except ImportError:  # transformers 5 folds the fast tokenizers into BertTokenizer
        from transformers import BertTokenizer as tokenizer_cls

    report["torch"] = torch.__version__
    report["transformers"] = transformers.__version__
    if not torch.cuda.is_available():
        report["errors"].append("torch.cuda.is_available() is False: no GPU visible to PyTorch")
        write(args.out, report, [])
        return 2
    dev = torch.device("cuda")
    report["gpu"] = torch.cuda.get_device_name(0)
    report["cuda"] = torch.version.cuda
    # Strict fp32, the precision infergate's engine is checked at.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report["allow_tf32"] = False

    torch.manual_seed(args.seed)
    config = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=args.intermediate,
                        max_position_embeddings=args.max_positions)
    # Eager attention exports to plain MatMul/Softmax, which onnx-gomlx runs.
    try:
        config._attn_implementation = "eager"
    except Exception as e:
        report["errors"].append(f"eager attention not set: {e!r}")
    model = BertModel(config, add_pooling_layer=False).eval().to(dev)
    report["model"] = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                       "intermediate": args.intermediate, "vocab": args.vocab,
                       "parameters": sum(p.numel() for p in model.parameters())}

    rows = []
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    for bs in sizes:
        measure(args, model, dev, gen, bs, "fp32", rows, report)
    # XLA may run fp32 matmuls as TF32 on this GPU by default; PyTorch's
    # TF32 figure at the largest batch shows how much that alone is worth.
    torch.backends.cuda.matmul.allow_tf32 = True
    measure(args, model, dev, gen, max(sizes), "tf32", rows, report)
    torch.backends.cuda.matmul.allow_tf32 = False

    if not args.skip_export:
        export(args, model, tokenizer_cls, report)
    write(args.out, report, rows)
    return 0 if rows else 1


def measure(args, model, dev, gen, bs, precision, rows, report):
    """Times whole forward passes of bs sequences for args.window seconds."""
    import torch
    ids = torch.randint(1000, args.vocab, (bs, args.seq_len), generator=gen).to(dev)
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    try:
        with torch.no_grad():
            for _ in range(3):
                model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            torch.cuda.synchronize()
            lat = []
            start = time.perf_counter()
            while time.perf_counter() - start < args.window or len(lat) < 10:
                t0 = time.perf_counter()
                model(input_ids=ids, attention_mask=mask, token_type_ids=types)
                torch.cuda.synchronize()
                lat.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
    except Exception as e:  # an OOM at one size must not lose the others
        report["errors"].append(f"batch {bs} {precision}: {e!r}")
        return
    lat.sort()
    rows.append({"batch_size": bs, "seq_len": args.seq_len, "precision": precision, "batches": len(lat),
                 "items_per_s": round(bs * len(lat) / elapsed, 1),
                 "p50_ms": round(percentile(lat, 50) * 1e3, 3),
                 "p99_ms": round(percentile(lat, 99) * 1e3, 3)})
    r = rows[-1]
    print(f"torch {precision} batch={bs:4d} seq={args.seq_len} {r['items_per_s']:10.1f} items/s "
          f"p50={r['p50_ms']:.2f}ms p99={r['p99_ms']:.2f}ms", flush=True)


def export(args, model, tokenizer_cls, report):
    import torch
    vocab_path = os.path.join(args.out, "vocab.txt")
    tok_path = os.path.join(args.out, "tokenizer.json")
    n = build_vocab(vocab_path)
    try:
        tok = tokenizer_cls(vocab_file=vocab_path, do_lower_case=True)
        tok.save_pretrained(args.out)  # writes tokenizer.json, which the engine reads
        report["tokenizer"] = {"path": tok_path, "vocab": n, "built_by": tokenizer_cls.__name__}
    except Exception:
        report["errors"].append("tokenizer: " + traceback.format_exc(limit=3))
    if not os.path.exists(tok_path):
        # Same WordPiece tokenizer.json, straight from the tokenizers library
        # transformers wraps, for versions whose save_pretrained writes none.
        try:
            from tokenizers.implementations import BertWordPieceTokenizer
            BertWordPieceTokenizer(vocab_path, lowercase=True).save(tok_path)
            report["tokenizer"] = {"path": tok_path, "vocab": n, "built_by": "BertWordPieceTokenizer"}
        except Exception:
            report["errors"].append("tokenizer fallback: " + traceback.format_exc(limit=3))

    class ByName(torch.nn.Module):
        """Passes the inputs by name: with them positional, the TorchScript
        export of transformers 5.17's BertModel failed with "got multiple
        values for argument 'use_cache'"."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    path = os.path.join(args.out, "encoder.onnx")
    cpu_model = ByName(model.to("cpu")).eval()
    ids = torch.randint(1000, args.vocab, (2, args.seq_len))
    inputs = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    kwargs = dict(input_names=["input_ids", "attention_mask", "token_type_ids"],
                  output_names=["last_hidden_state"], opset_version=17,
                  dynamic_axes={n: {0: "batch", 1: "seq"} for n in
                                ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]})
    # The dynamo exporter (torch 2.11, onnxscript installed) gave a graph
    # the engine served on an H200; the TorchScript one is the fallback for
    # a torch without it. One file, weights inside: the engine takes a
    # single .onnx path.
    attempts = [dict(dynamo=True, external_data=False), dict(dynamo=False), dict()]
    for extra in attempts:
        try:
            with torch.no_grad():
                torch.onnx.export(cpu_model, inputs, path, **kwargs, **extra)
            report["onnx"] = {"path": path, "opset": 17, "exporter_args": extra, "bytes": os.path.getsize(path)}
            break
        except TypeError as e:  # a torch without these keywords
            report["errors"].append(f"onnx export {extra}: {e!r}")
        except Exception:
            report["errors"].append(f"onnx export {extra}: " + traceback.format_exc(limit=3))


def write(out, report, rows):
    report["results"] = rows
    with open(os.path.join(out, "torch_bench.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "torch_bench.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["batch_size", "seq_len", "precision", "batches", "items_per_s", "p50_ms", "p99_ms"])
        w.writeheader()
        w.writerows(rows)
    for e in report["errors"]:
        print("error:", e, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
