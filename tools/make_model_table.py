"""Regenerate the README's model table from the registry and measured counts.

    python tools/make_model_table.py [--check]

Builds every registered model (no weights) at its default size, counts parameters and
multiply-accumulates, and writes a Markdown table between the ``<!-- MODEL TABLE -->``
markers of README.md. Published top-1 comes from the variant tables (official READMEs).
"""

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = "<!-- MODEL TABLE -->"
END = "<!-- /MODEL TABLE -->"


def rows():
    import visionzoo

    out = ["| model | input | params (M) | GMACs | top-1 (published) | timm name | weights |",
           "|---|---|---|---|---|---|---|"]
    for name in visionzoo.list_models(task="classification"):
        info = visionzoo.model_info(name)
        v = visionzoo.get_variant(name)
        params = info["params"] / 1e6
        if info["params"] != info["trainable_params"]:
            frozen = (info["params"] - info["trainable_params"]) / 1e6
            p = f"{info['trainable_params'] / 1e6:.2f} + {frozen:.2f} frozen"
        else:
            p = f"{params:.2f}"
        out.append(f"| `{name}` | {v.input_size} | {p} | {info['gmacs']:.2f} | "
                   f"{v.published.get('top1', '—')} | {v.timm or '—'} | "
                   f"{', '.join(v.weights)} |")
        print(out[-1], file=sys.stderr)
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.parse_args()
    table = rows()
    path = os.path.join(ROOT, "README.md")
    text = open(path).read()
    block = f"{START}\n{table}\n{END}"
    if END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda m: block, text,
                      flags=re.S)
    else:
        text = text.replace(START, block)
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
