"""Regenerate ``visionzoo/data/imagenet_class_index.json`` (offline).

Provenance: the ImageNet-1k class order (1000 WordNet synset ids, one per line) and
the WordNet lemmas of every synset are the two text files timm ships inside its
package, ``timm/data/_info/imagenet_synsets.txt`` and
``timm/data/_info/imagenet_synset_to_lemma.txt`` (``wnid<TAB>lemma, lemma, ...``).
The class name of index ``i`` is the *first* lemma of synset ``i`` with spaces
replaced by underscores, which is the spelling of Keras' own
``imagenet_class_index.json`` (``"2": ["n01484850", "great_white_shark"]``).

Usage::

    python tools/make_imagenet_class_index.py            # write the JSON
    python tools/make_imagenet_class_index.py --check    # exit 1 if it is stale

Only the standard library and an installed ``timm`` are needed; nothing is
downloaded.
"""

import argparse
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "visionzoo", "data", "imagenet_class_index.json")


def timm_info_dir():
    """The ``timm/data/_info`` folder of the installed timm (without importing timm)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("timm is not installed; it provides the synset and lemma lists.")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "_info")


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def build_index(info_dir):
    """``{"0": [wnid, name], ...}`` for the 1000 ImageNet-1k classes, in model order."""
    synsets = read_lines(os.path.join(info_dir, "imagenet_synsets.txt"))
    if len(synsets) != 1000 or len(set(synsets)) != 1000:
        raise SystemExit(f"Expected 1000 unique synsets, found {len(synsets)} "
                         f"({len(set(synsets))} unique).")
    lemmas = {}
    for line in read_lines(os.path.join(info_dir, "imagenet_synset_to_lemma.txt")):
        wnid, _, text = line.partition("\t")
        lemmas[wnid] = text
    index = {}
    for i, wnid in enumerate(synsets):
        if wnid not in lemmas:
            raise SystemExit(f"No lemma for synset {wnid} (class {i}).")
        first = lemmas[wnid].split(",")[0].strip()
        index[str(i)] = [wnid, first.replace(" ", "_")]
    return index


def render(index):
    # One class per line: small diffs, readable, still plain JSON.
    rows = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in index.items()]
    return "{\n" + ",\n".join(rows) + "\n}\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--check", action="store_true",
                        help="compare with the existing file instead of writing it")
    args = parser.parse_args(argv)
    text = render(build_index(timm_info_dir()))
    if args.check:
        try:
            with open(args.output, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print(f"{args.output} is out of date; rerun without --check.")
            return 1
        print(f"{args.output} is up to date.")
        return 0
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"Wrote {len(json.loads(text))} classes to {args.output}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
