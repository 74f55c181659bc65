"""plot_curve: a learning-curve PNG from `benchmarks.learning_curve` rows (Pillow only).

Usage:
    python -m benchmarks.plot_curve FILE.jsonl [FILE.jsonl ...] --out docs/images/curve.png \
        [--metric shape_accuracy] [--tags tag1,tag2] [--chance 0.1667]

One line per tag (the `tag` field of the rows), the metric against training
steps, with +-1 standard-error bars where the rows carry `<metric>_se`.
"""

import argparse
import json

from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 60


def load_rows(paths, tags=None):
    """The rows of the files `paths` (one path or a list) grouped by tag, each sorted by step."""
    curves = {}
    for path in [paths] if isinstance(paths, str) else paths:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                tag = row.get("tag", "")
                if tags and tag not in tags:
                    continue
                curves.setdefault(tag, []).append(row)
    return {tag: sorted(rows, key=lambda r: r["step"]) for tag, rows in curves.items()}


def plot(curves, metric, out, title=None, chance=None, y_range=(0.0, 1.0)):
    """Draw `metric` against `step` for each curve and save a PNG at `out`."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    max_step = max(row["step"] for rows in curves.values() for row in rows)
    y_low, y_high = y_range

    def xy(step, value):
        x = LEFT + (WIDTH - LEFT - RIGHT) * step / max_step
        y = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (value - y_low) / (y_high - y_low)
        return x, y

    draw.rectangle((LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM), outline="black")
    for tick in range(6):
        value = y_low + (y_high - y_low) * tick / 5
        x, y = xy(0, value)
        draw.line((LEFT - 4, y, LEFT, y), fill="black")
        draw.text((8, y - 6), f"{value:.2f}", fill="black")
    for tick in range(5):
        step = max_step * tick / 4
        x, y = xy(step, y_low)
        draw.line((x, y, x, y + 4), fill="black")
        draw.text((x - 14, y + 8), f"{step:.0f}", fill="black")
    draw.text((WIDTH // 2 - 30, HEIGHT - 22), "training steps", fill="black")
    draw.text((LEFT, 10), title or metric, fill="black")
    if chance is not None:
        _, y = xy(0, chance)
        draw.line((LEFT, y, WIDTH - RIGHT, y), fill=(160, 160, 160))
        draw.text((WIDTH - RIGHT - 60, y - 14), "chance", fill=(120, 120, 120))
    for index, (tag, rows) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        points = [xy(row["step"], row[metric]) for row in rows]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for row, (x, y) in zip(rows, points, strict=True):
            error = row.get(f"{metric}_se")
            if error:
                _, y0 = xy(0, row[metric] - error)
                _, y1 = xy(0, row[metric] + error)
                draw.line((x, y0, x, y1), fill=colour)
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        draw.text((LEFT + 10, TOP + 8 + 14 * index), tag or "(untagged)", fill=colour)
    image.save(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metric", default="shape_accuracy")
    parser.add_argument("--tags", default=None, help="comma-separated tags to plot")
    parser.add_argument("--title", default=None)
    parser.add_argument("--chance", type=float, default=None)
    args = parser.parse_args(argv)
    tags = [t for t in args.tags.split(",") if t] if args.tags else None
    curves = load_rows(args.files, tags)
    if not curves:
        raise SystemExit(f"No rows to plot. Received: files={args.files!r}, tags={args.tags!r}")
    plot(curves, args.metric, args.out, title=args.title, chance=args.chance)


if __name__ == "__main__":
    main()
