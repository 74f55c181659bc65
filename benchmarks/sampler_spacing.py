"""sampler_spacing: each sampler's error per timestep spacing, at equal denoiser calls.

Picks the default spacing of every sampler in `kzoo.diffusion.samplers`
(docs/samplers.md). No trained model: the closed-form Gaussian oracle of
`tests/test_samplers.py`, where data x0 ~ N(mu, diag(s^2)) (mu = (-1.5, 0.3, 1, 2),
s = (0.3, 0.8, 1, 1.7)), so the optimal denoiser and the exact answer are known.

Usage:
    python -m benchmarks.sampler_spacing [--calls 10,20,50] [--out FILE]
    python -m benchmarks.sampler_spacing --table FILE.jsonl    # markdown tables

Protocol (one JSON line per row on stdout):
- Schedules "linear" (betas 1e-4..0.02) and "cosine", T = 1000, v-prediction (kzoo's
  diffusion recipes; eps and x0 give the same samples to ~1e-5 with this denoiser).
- Spacings "leading", "trailing", "linspace" for every sampler, plus "karras"
  (Karras et al. sigmas from the first trailing timestep) for Euler and Heun; every
  other argument at its default (DDIM eta 0, DDPM "fixed_small", Heun sigma_max 80).
- `calls_budget`: denoiser calls allowed. DDPM, DDIM, DPM-Solver++ 2M and Euler make
  one call per step; Heun's `n` steps cost `2n - 1`, so it runs `(budget + 1) // 2`
  steps (9/19/49 calls for 10/20/50): `denoiser_calls` is what was spent.
- `error` (`tests.test_samplers.closed_form_error`): deterministic samplers, the mean
  |x - x_exact| over 2048 fixed noise draws x 4 dims, x_exact where the exact
  probability-flow ODE takes the same noise from the sampler's start (t = T - 1;
  Heun: sigma 80); DDPM, the 2-Wasserstein distance between its exact output
  distribution (Gaussian: the loop is affine in all its noise) and the data's.
- `is_default`: the spacing is what `make_sampler(name, schedule)` uses.
"""

import argparse
import json
import os
import platform
import sys

BENCHMARK = "sampler_spacing"
SCHEDULES = ("linear", "cosine")
PREDICTION_TYPE = "v"
ERROR_MEASURES = {
    True: "w2_to_data_distribution",
    False: "mean_abs_error_to_exact_ode_solution",
}
SAMPLER_NAMES = {
    "ddpm": "DDPM",
    "ddim": "DDIM (eta 0)",
    "dpmpp_2m": "DPM-Solver++ 2M",
    "euler": "Euler",
    "heun": "Heun",
}


def _int_list(text):
    return [int(x) for x in text.split(",") if x.strip()]


def run(args):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from benchmarks.quality_diffusion import _versions
    from kzoo.diffusion import make_sampler, make_schedule
    from tests.test_samplers import NUM_SAMPLES, spacing_errors, spacing_of

    common = {
        "benchmark": BENCHMARK,
        "prediction_type": PREDICTION_TYPE,
        "num_train_timesteps": 1000,
        "samples": NUM_SAMPLES,
        "versions": _versions(),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
    }
    for schedule_name in SCHEDULES:
        schedule = make_schedule(schedule_name)
        for name in SAMPLER_NAMES:
            default = spacing_of(make_sampler(name, schedule))
            stochastic = make_sampler(name, schedule).stochastic
            for budget in args.calls:
                errors, steps, calls = spacing_errors(name, schedule, budget, PREDICTION_TYPE)
                for spacing, error in errors.items():
                    row = {
                        **common,
                        "schedule": schedule_name,
                        "sampler": name,
                        "spacing": spacing,
                        "is_default": spacing == default,
                        "calls_budget": budget,
                        "steps": steps,
                        "denoiser_calls": calls,
                        "error_measure": ERROR_MEASURES[stochastic],
                        "error": error,
                    }
                    line = json.dumps(row)
                    print(line, flush=True)
                    if args.out:
                        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                        with open(args.out, "a") as f:
                            f.write(line + "\n")


def _fmt(error):
    return f"{error:.3g}"


def _errors_by_spacing(rows):
    """`{(sampler, spacing): {(schedule, budget): error}}`, the defaults, the calls spent."""
    errors, defaults, calls = {}, set(), {}
    for row in rows:
        key = (row["sampler"], row["spacing"])
        errors.setdefault(key, {})[(row["schedule"], row["calls_budget"])] = row["error"]
        calls[(row["sampler"], row["calls_budget"])] = row["denoiser_calls"]
        if row["is_default"]:
            defaults.add(key)
    return errors, defaults, calls


def markdown_table(rows):
    """Sampler x spacing rows, one column per schedule and budget.

    Bold: the smallest error of the sampler in that column, at the 3 significant
    digits shown (equal figures are both bold).
    """
    errors, defaults, calls = _errors_by_spacing(rows)
    budgets = sorted({row["calls_budget"] for row in rows})
    columns = [(s, b) for s in SCHEDULES for b in budgets]
    best = {}
    for (name, _), by_column in errors.items():
        for column, error in by_column.items():
            best[(name, column)] = min(best.get((name, column), error), error)
    header = " | ".join(f"{s} {b}" for s, b in columns)
    lines = [f"| sampler | spacing | {header} |", "|---|---|" + "---|" * len(columns)]
    for name in SAMPLER_NAMES:
        spent = ", ".join(str(calls[(name, b)]) for b in budgets if (name, b) in calls)
        label = f"{SAMPLER_NAMES[name]} ({spent} calls)" if name == "heun" else SAMPLER_NAMES[name]
        for (sampler, spacing), by_column in errors.items():
            if sampler != name:
                continue
            cells = []
            for column in columns:
                error = by_column.get(column)
                if error is None:
                    cells.append("-")
                elif _fmt(error) == _fmt(best[(name, column)]):
                    cells.append(f"**{_fmt(error)}**")
                else:
                    cells.append(_fmt(error))
            mark = " (default)" if (sampler, spacing) in defaults else ""
            lines.append(f"| {label} | {spacing}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def choice_table(rows):
    """Per sampler and schedule: the best spacing at the middle budget and by the sum."""
    errors, defaults, _ = _errors_by_spacing(rows)
    budgets = sorted({row["calls_budget"] for row in rows})
    middle = budgets[len(budgets) // 2]
    lines = [
        f"| sampler | best at {middle} calls, linear | cosine "
        "| best by sum over budgets, linear | cosine | default |",
        "|---|---|---|---|---|---|",
    ]
    for name in SAMPLER_NAMES:
        spacings = {sp: by for (sampler, sp), by in errors.items() if sampler == name}
        if not spacings:
            continue
        cells = []
        for rank_by in (lambda by: [by[middle]], lambda by: [by[b] for b in budgets]):
            for schedule in SCHEDULES:
                scores = {
                    spacing: sum(rank_by({b: by[(schedule, b)] for b in budgets}))
                    for spacing, by in spacings.items()
                }
                winner = min(scores, key=scores.get)
                cells.append(f"{winner} ({_fmt(scores[winner])})")
        default = next(sp for (sampler, sp) in defaults if sampler == name)
        lines.append(f"| {SAMPLER_NAMES[name]} | " + " | ".join(cells) + f" | {default} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sampler_spacing", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--calls", type=_int_list, default=[10, 20, 50])
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--table", metavar="FILE", help="print the markdown table of FILE")
    args = parser.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        print(markdown_table(rows))
        print()
        print(choice_table(rows))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
