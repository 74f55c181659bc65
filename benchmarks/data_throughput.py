"""data_throughput: images/s that `kzoo.data.load` serves, own folder vs `kzoo_shapes`.

Writes `--num-images` PNG files (kzoo_shapes renders at `--source-size`, so the
decoder sees real image content) into a temporary folder, then times three
pipelines at `--image-size`, batch `--batch-size`, on `--threads` CPU threads
(tf.data's private thread pool and TF's op pools):

- `folder_decode_augment`: `folder:DIR?crop=random&flip=true` with `cache=False`:
  every served image is read, decoded, resized, randomly cropped and flipped;
- `folder_cached`: the same with the cache, timed after one full epoch filled it
  (what training runs at from the second epoch);
- `kzoo_shapes_memory`: `kzoo_shapes` rendered in memory at `--image-size`.

Each is timed over `--epochs` passes of `--num-images` images after one warm-up
batch; the result is one JSON line (images/s, and the settings) appended to
`--out` and printed.

Run:
    .venv/bin/python -m benchmarks.data_throughput --out results.jsonl
"""

import argparse
import json
import os
import platform
import tempfile
import time


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--source-size", type=int, default=128, help="side of the PNG files")
    parser.add_argument("--image-size", type=int, default=64, help="side served")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="timed passes per pipeline")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--host", default="unknown", help="a word on the host (shared, idle)")
    parser.add_argument("--out", help="JSONL file to append the result to")
    return parser


def write_pngs(folder, num_images, size):
    """`num_images` kzoo_shapes images as PNG files of `size` x `size` in `folder`."""
    from kzoo.data import shapes
    from kzoo.data.images import save_png

    images = shapes.generate(num_images, image_size=size, seed=0)["image"]
    for index, image in enumerate(images):
        save_png(os.path.join(folder, f"{index:05d}.png"), image)


def images_per_s(dataset, num_images, batch_size, epochs):
    """Images/s over `epochs` passes of `num_images`, after one warm-up batch."""
    iterator = iter(dataset)
    next(iterator)
    batches = max(1, (num_images * epochs) // batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv=None):
    args = _parser().parse_args(argv)
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import kzoo.data

    options = tf.data.Options()
    options.threading.private_threadpool_size = args.threads

    def pipeline(name, cache):
        dataset = kzoo.data.load(
            name,
            batch_size=args.batch_size,
            image_size=args.image_size,
            repeat=True,
            drop_remainder=True,
            cache=cache,
        )
        return dataset.with_options(options)

    with tempfile.TemporaryDirectory() as folder:
        write_pngs(folder, args.num_images, args.source_size)
        name = f"folder:{folder}?crop=random&flip=true"
        kzoo.data.folders.index(name)  # the one-off decode check, not timed
        timed = {"folder_decode_augment": pipeline(name, cache=False)}
        cached = pipeline(name, cache=True)
        images_per_s(cached, args.num_images, args.batch_size, 1)  # fills the cache
        timed["folder_cached"] = cached
        timed["kzoo_shapes_memory"] = pipeline("kzoo_shapes", cache=True)
        result = {
            "benchmark": "data_throughput",
            **{
                f"{key}_images_per_s": round(
                    images_per_s(dataset, args.num_images, args.batch_size, args.epochs), 1
                )
                for key, dataset in timed.items()
            },
            "num_images": args.num_images,
            "source_size": args.source_size,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "loadavg_before": round(os.getloadavg()[0], 2),
            "host": args.host,
            "machine": platform.machine(),
            "tensorflow": tf.__version__,
            "date": time.strftime("%Y-%m-%d"),
        }
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return result


if __name__ == "__main__":
    main()
