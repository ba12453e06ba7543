"""`syncxr embed`: image and text embeddings of a dataset under a trained model."""
from __future__ import annotations

from engine.core.arg_types import positive_int

DESCRIPTION = """\
Embed every pair of a dataset with a trained model: --checkpoint is a `syncxr train` run
directory (its model/) or a saved model directory; --data a `syncxr synth` dataset or
table:PATH / mimic:ROOT / openi:PNGDIR. Text is the whole report (FINDINGS + IMPRESSION).

Output: a Parquet file with sample_id, image_embedding, text_embedding (float32 lists,
L2-normalised). Images that do not decode are left out and counted."""


def register(sub) -> None:
    p = sub.add_parser("embed", help="image/text embeddings of a dataset under a trained model",
                       description=DESCRIPTION)
    p.add_argument("--checkpoint", required=True, help="a `syncxr train` run directory or a saved model directory")
    p.add_argument("--data", required=True, help="a `syncxr synth` dataset directory, or table:/mimic:/openi: SPEC")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--batch-size", type=positive_int, default=64, help="pairs per forward pass (default 64)")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    p.set_defaults(func=run)


def embed_source(model, source, batch_size: int = 64):
    """(ids, image embeddings [N, D], text embeddings [N, D], undecodable count) in the driver
    process, batch by batch, in the model-input frame that training and validation use."""
    import numpy as np
    import torch

    from train.data.cache import collect
    from train.data.preprocess import decode_batch

    model.eval()
    table = source.to_arrow(source.ids)
    ids, image_parts, text_parts, skipped = [], [], [], 0
    for start in range(0, table.num_rows, batch_size):
        rows = collect([decode_batch(table.slice(start, batch_size).to_pydict(), model.resize_to)], model.resize_to)
        skipped += rows.skipped
        if not len(rows):
            continue
        images, texts = rows.batch(np.arange(len(rows)), model.image_size)
        tok = model.tokenize(texts)
        with torch.no_grad():
            image_parts.append(model.embed_image(images).float().numpy())
            text_parts.append(model.embed_text(tok["input_ids"], tok["attention_mask"]).float().numpy())
        ids.extend(str(s) for s in rows.sample_ids)
    if not ids:
        return [], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), skipped
    return ids, np.concatenate(image_parts), np.concatenate(text_parts), skipped


def run(args) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.core.errors import UserError
    from engine.core.ownership import check_file_out
    from train.data.sources import REAL_KINDS, real_source, synthetic_source
    from train.models import load_model, model_dir

    out = check_file_out(args.out, [args.data, args.checkpoint], args.overwrite)
    model = load_model(model_dir(args.checkpoint))
    kind = args.data.partition(":")[0]
    source = real_source(args.data) if kind in REAL_KINDS and ":" in args.data else synthetic_source(args.data)
    ids, image_emb, text_emb, skipped = embed_source(model, source, args.batch_size)
    if not ids:
        raise UserError(f"--data {args.data}: no image decodes ({skipped} rows); nothing to embed")
    dim = image_emb.shape[1] if len(ids) else 0
    table = pa.table({
        "sample_id": pa.array(ids, pa.string()),
        "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(image_emb.reshape(-1).astype(np.float32)), dim),
        "text_embedding": pa.FixedSizeListArray.from_arrays(pa.array(text_emb.reshape(-1).astype(np.float32)), dim),
    })
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)  # whole or absent
    print(f"{len(ids)} pairs embedded ({dim}-d) -> {out}" + (f"; {skipped} images did not decode, left out" if skipped else ""))
    return 0
