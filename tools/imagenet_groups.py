"""Derive ImageNet-1k's WordNet ids and the groups of classes a config may watch (`watch =
["dog"]`) from WordNet 3.0; write them to pipeline/config/imagenet_groups.json, which ships.

    apt-get install wordnet-base              # WordNet 3.0 in /usr/share/wordnet (Debian, Ubuntu)
    python -m tools.imagenet_groups           # writes the file
    python -m tools.imagenet_groups --check   # derives it again and compares (exit 1 if it differs)

The ids. An ImageNet class's wnid is 'n' + the 8-digit offset of its WordNet 3.0 noun synset, and
the class index is the wnid's place in sorted order (torchvision's, Caffe's and Keras's indices).
Each class's name (pipeline/config/imagenet_classes.txt) is a lemma of its synset ('crane bird' and
'maillot tank suit', renamed here to be told apart, are 'crane' and 'maillot'). Where the name is a
lemma of several synsets, the order settles most (the wnids increase with the index); for the 113
where more than one sense still fits between the neighbours ('abacus': the calculator n02666196, or
the slab on top of a column n02666347), CHOSEN below names ImageNet's own synset, from ImageNet's published
list of the 1000 (LOC_synset_mapping.txt; two copies of Keras's imagenet_class_index.json agree).
Checked on every run: each wnid is a synset with the class's name, the 1000 strictly increase with
the index, no class lies under another in the hierarchy, and, where
../shared/assets/images/labels.csv is, its 200 (wnid, index) pairs agree.

The groups. A group is one WordNet synset, named by one of its lemmas, and holds the ImageNet classes
whose synset lies under it (through hypernym and instance-hypernym pointers, every path: WordNet has
several parents for some). `dog` is n02084071 'dog, domestic dog, Canis familiaris': its subtree
holds exactly the 118 breeds, classes 151-268 (wolves, foxes and hyenas are canines, not dogs; the
hotdog is food). A group name is never a class name (`amphibian` is the amphibious vehicle, so no
amphibian group), and every group has at least two classes. The membership is WordNet's, quirks
included: `fruit` is botanical (acorn, buckeye, rapeseed, corn), `ball` holds the punching bag,
`computer` the slide rule and the web site, `truck` the minivan, `cat` (WordNet's 'cat, true cat')
the cougar and the lynx besides the five house cats, `car` (the motorcar, not the railway car) not
the police van or the pickup (trucks in WordNet: see `motor vehicle`).

`person` is not a group: ImageNet's only classes of people are ballplayer, groom and scuba diver
(a photo of a person is classified by what dominates it: a jersey, a suit, a bow tie), so the file
names them under `people`, for the error a config that watches `person` gets.

The words. For a name that is neither a class nor a group, an error proposes the classes it may
mean: `words` maps every other lemma of each class's synset ('tv': television, 'taxi': cab) and
the lemmas of a few synsets with too few classes for a group (HINTS: 'horse': sorrel) to classes.
Proposed only, never taken: 'tv' stays an error that names 'television'.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ROOT / "pipeline" / "config" / "imagenet_classes.txt"
OUT = ROOT / "pipeline" / "config" / "imagenet_groups.json"
LABELLED = ROOT.parent / "shared" / "assets" / "images" / "labels.csv"
WORDNET = Path("/usr/share/wordnet")

# Names this project changed so that no two classes share one: the WordNet lemma they stand for.
RENAMED = {"crane bird": "crane", "maillot tank suit": "maillot"}

# Class index -> its synset's offset, where the name and the order leave more than one sense.
CHOSEN = {
    11: "01531178",  # goldfinch: small European finch having a crimson face and...
    55: "01729977",  # green snake: either of two North American chiefly insectivorous...
    86: "01807496",  # partridge: small Old World gallinaceous game birds
    102: "01872401",  # echidna: a burrowing monotreme mammal covered with spines and...
    107: "01910747",  # jellyfish: any of numerous usually marine and free-swimming...
    121: "01981276",  # king crab: large edible crab of northern Pacific waters especially...
    277: "02119022",  # red fox: the common Old World fox
    278: "02119789",  # kit fox: small grey fox of southwestern United States
    281: "02123045",  # tabby: a cat with a grey or tawny coat mottled with black
    345: "02403003",  # ox: an adult castrated bull of the genus Bos
    398: "02666196",  # abacus: a calculator that performs arithmetic functions by...
    406: "02699494",  # altar: a raised structure on which gifts or sacrifices to a god...
    408: "02704792",  # amphibian: a flat-bottomed motor vehicle that can travel on land or...
    411: "02730930",  # apron: a garment of cloth or leather or plastic that is tied...
    417: "02782093",  # balloon: large tough nonrigid bag filled with gas or heated air
    427: "02795169",  # barrel: a cylindrical container that holds liquids
    431: "02804414",  # bassinet: a basket (usually hooded) used as a baby's bed
    438: "02815834",  # beaker: a flatbottomed jar made of glass or plastic
    443: "02834397",  # bib: top part of an apron
    446: "02840245",  # binder: holds loose papers or magazines
    450: "02860847",  # bobsled: a long racing sled (for 2 or more people) with a...
    456: "02879718",  # bow: a weapon for shooting arrows, composed of a curved piece...
    458: "02892201",  # brass: a memorial made of brass
    468: "02930766",  # cab: a car driven by a person whose job is to take passengers...
    471: "02950826",  # cannon: heavy gun fired from a tank
    476: "02966193",  # carousel: a large, rotating machine with seats for children to...
    483: "02980441",  # castle: a large building formerly occupied by a ruler and...
    488: "02999410",  # chain: a series of (usually metal) rings or links fitted into...
    492: "03014705",  # chest: box with a lid
    501: "03045698",  # cloak: anything that covers or conceals
    502: "03047690",  # clog: footwear usually with wooden soles
    506: "03065424",  # coil: a structure consisting of something wound in a...
    511: "03100240",  # convertible: a car that has top that can be folded or removed
    520: "03131574",  # crib: baby bed with high sides made of slats
    529: "03188531",  # diaper: garment consisting of a folded cloth drawn up between...
    536: "03216828",  # dock: landing in a harbor next to a pier where ships are...
    538: "03220513",  # dome: a hemispherical roof
    541: "03249569",  # drum: a musical percussion instrument
    544: "03259280",  # Dutch oven: an oven consisting of a metal box for cooking in front...
    549: "03291819",  # envelope: a flat (usually rectangular) container for a letter,...
    553: "03337140",  # file: office furniture consisting of a container for keeping...
    558: "03372029",  # flute: a high-pitched woodwind instrument
    562: "03388043",  # fountain: a structure from which an artificially produced jet of...
    576: "03447447",  # gondola: long narrow flat-bottomed boat propelled by sculling
    578: "03450230",  # gown: a woman's dress, usually with a close-fitting bodice and...
    581: "03459775",  # grille: grating that admits cooling air to car's radiator
    586: "03478589",  # half track: a motor vehicle propelled by half tracks
    587: "03481172",  # hammer: a hand tool with a heavy rigid head and a handle
    594: "03495258",  # harp: a chordophone that has a triangular frame consisting of...
    597: "03527444",  # holster: a sheath (usually leather) for carrying a handgun
    600: "03532672",  # hook: a mechanical device that is curved or bent to suspend or...
    606: "03584829",  # iron: home appliance consisting of a flat metal base that is...
    610: "03595614",  # jersey: a close-fitting pullover shirt
    624: "03661043",  # library: a building that houses a collection of books and other...
    628: "03673027",  # liner: a large commercial ship (especially one that carries...
    631: "03690938",  # lotion: any of various cosmetic preparations that are applied to...
    636: "03709823",  # mailbag: letter carrier's shoulder bag
    643: "03724870",  # mask: a covering to disguise or conceal the face
    664: "03782006",  # monitor: electronic equipment that is used to check the quality...
    666: "03786901",  # mortar: a bowl-shaped vessel in which substances can be ground...
    667: "03787032",  # mortarboard: an academic cap with a flat square with a tassel on top
    693: "03873416",  # paddle: a short light oar used without an oarlock to propel a...
    697: "03877472",  # pajama: (usually plural) loose-fitting nightclothes worn for...
    698: "03877845",  # palace: official residence of an exalted person (as a sovereign)
    714: "03929660",  # pick: a small thin device (of metal or plastic or ivory) used...
    717: "03930630",  # pickup: a light truck with an open body and low sides and a...
    718: "03933933",  # pier: a support for two adjacent bridge spans
    723: "03944341",  # pinwheel: a wheel that has numerous pins that are set at right...
    726: "03954731",  # plane: a carpenter's hand tool with an adjustable blade for...
    727: "03956157",  # planetarium: a building housing an instrument for projecting the...
    733: "03976657",  # pole: a long (usually round) rod of wood or metal or plastic
    738: "03991062",  # pot: a container in which plants are cultivated
    742: "04004767",  # printer: (computer science) an output device that prints the...
    745: "04009552",  # projector: an optical instrument that projects an enlarged image...
    753: "04040759",  # radiator: a mechanism consisting of a metal honeycomb through...
    754: "04041544",  # radio: a communication system based on broadcasting...
    758: "04067472",  # reel: winder consisting of a revolving spool with a handle
    763: "04086273",  # revolver: a pistol with a revolving cylinder (usually having six...
    766: "04111531",  # rotisserie: an oven or broiler equipped with a rotating spit on...
    771: "04125021",  # safe: strongbox where valuables can be safely kept
    778: "04141975",  # scale: a measuring instrument for weighing
    780: "04147183",  # schooner: sailing vessel used in former times
    782: "04152593",  # screen: the display that is electronically created on the...
    783: "04153751",  # screw: a fastener with a tapered threaded shank and a slotted head
    787: "04192698",  # shield: armor carried on the arm to intercept blows
    792: "04208210",  # shovel: a hand tool for lifting loose material
    800: "04243546",  # slot: a slot machine that is used for gambling
    801: "04251144",  # snorkel: breathing device consisting of a bent tube fitting into...
    813: "04270147",  # spatula: a turner with a narrow flexible blade
    815: "04275548",  # spider web: a web resembling the webs spun by spiders
    816: "04277352",  # spindle: a stick or pin used to twist the yarn in spinning
    819: "04296562",  # stage: a large platform on which people can stand and can be...
    827: "04330267",  # stove: any heating apparatus
    830: "04336792",  # stretcher: a litter for transporting people who are ill or wounded...
    834: "04350905",  # suit: a set of garments (usually including a jacket and...
    840: "04367480",  # swab: cleaning implement consisting of absorbent material...
    844: "04372370",  # switch: control consisting of a mechanical or electrical or...
    847: "04389033",  # tank: an enclosed armored military vehicle
    851: "04404412",  # television: a telecommunication system that transmits images of...
    866: "04465501",  # tractor: a wheeled vehicle with large wheels
    881: "04515003",  # upright: a piano with a vertical sounding board
    884: "04523525",  # vault: an arched brick or stone ceiling or roof
    894: "04550184",  # wardrobe: a tall piece of furniture that provides storage space...
    896: "04553703",  # washbasin: a basin for washing the hands (`wash-hand basin' is a...
    897: "04554684",  # washer: a home appliance for washing clothes and linens...
    902: "04579432",  # whistle: acoustic device that forces air or steam against an edge...
    908: "04592741",  # wing: one of the horizontal airfoils on either side of the...
    910: "04597913",  # wooden spoon: a spoon made of wood
    914: "04612504",  # yawl: a ship's small boat (usually rowed by 4 or 6 oars)
    980: "09472597",  # volcano: a mountain formed by volcanic material
    982: "10148035",  # groom: a man participant in his own marriage ceremony
    987: "12144580",  # corn: the dried grains or kernels or corn used as animal feed...
    990: "12768682",  # buckeye: the inedible nutlike seed of the horse chestnut
}

# The groups: (name, synset offset). Animals, then vehicles, then things.
GROUPS = (
    ("animal", "00015388"), ("mammal", "01861778"), ("bird", "01503061"), ("fish", "02512053"),
    ("shark", "01482330"), ("reptile", "01661091"), ("snake", "01726692"),
    ("lizard", "01674464"), ("turtle", "01662784"), ("frog", "01639765"),
    ("insect", "02159955"), ("beetle", "02164464"), ("butterfly", "02274259"),
    ("spider", "01772222"), ("crab", "01976957"), ("dog", "02084071"), ("wolf", "02114100"),
    ("fox", "02118333"), ("cat", "02121620"), ("big cat", "02127808"), ("bear", "02131653"),
    ("monkey", "02484322"), ("ape", "02470325"), ("primate", "02469914"),
    ("rodent", "02329401"), ("rabbit", "02324045"), ("elephant", "02503517"),
    ("whale", "02062744"),
    ("vehicle", "04524313"), ("motor vehicle", "03791235"), ("car", "02958343"),
    ("truck", "04490091"), ("van", "04520170"), ("bus", "02924116"), ("bicycle", "02834778"),
    ("locomotive", "03684823"), ("aircraft", "02686568"), ("boat", "02858304"),
    ("ship", "04194289"), ("watercraft", "04530566"),
    ("bottle", "02876657"), ("ball", "02778669"), ("chair", "03001627"), ("bag", "02773037"),
    ("box", "02883344"), ("clock", "03046257"), ("computer", "03082979"),
    ("telephone", "04401088"), ("camera", "02942699"), ("musical instrument", "03800933"),
    ("piano", "03928116"), ("guitar", "03467517"), ("shoe", "04199027"),
    ("footwear", "03380867"), ("hat", "03497657"), ("fence", "03327234"), ("gun", "03467984"),
    ("fruit", "13134947"), ("vegetable", "07707451"), ("building", "02913152"),
)
NOT_GROUPS = (("person", "00007846"),)  # named in the file, not watchable: see above
# Words proposed (never taken) for a name that is no class or group: besides every other lemma of
# each class's synset ('tv', 'cellphone', 'trash can', 'taxi'), these synsets' lemmas, each
# proposing the classes under it ('horse': sorrel; too few classes for a group, or not named so).
HINTS = ("02374451", "02402425", "02411705", "02416519", "02395003", "02355227", "02076196",
         "03790512", "04468005", "02691156", "04256520", "02818832", "03221720", "02828884",
         "03797390", "03636649", "04379243", "04379964")
DOG_BREEDS = range(151, 269)  # the group `dog` must be exactly these
ABOUT = ("Written by tools/imagenet_groups.py from WordNet 3.0 (do not edit): `groups`, the groups a "
         "config may watch (a synset: the classes under it); `people`, the classes of people, for "
         "the error that a config watching `person` gets; `words`, what an unknown name may mean, "
         "proposed in errors; `wnids`, each class's WordNet id (index i = class i).")


class Derivation(Exception):
    """The names, WordNet or the order disagree: nothing is written."""


class WordNet:
    """The noun synsets of a WordNet 3.0 data.noun: lemmas and hypernyms by offset."""

    def __init__(self, folder: Path):
        self.lemmas: dict[str, list[str]] = {}
        self.parents: dict[str, list[str]] = {}
        self.by_lemma: dict[str, set[str]] = defaultdict(set)
        with open(folder / "data.noun", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # the licence
                    continue
                fields = line.split()
                offset, words = fields[0], int(fields[3], 16)
                lemmas = [_lemma(fields[4 + 2 * i]) for i in range(words)]
                p = 4 + 2 * words
                pointers, p = int(fields[p]), p + 1
                parents = []
                for _ in range(pointers):
                    symbol, target, pos = fields[p:p + 3]
                    p += 4
                    if symbol in ("@", "@i") and pos == "n":
                        parents.append(target)
                self.lemmas[offset], self.parents[offset] = lemmas, parents
                for lemma in lemmas:
                    self.by_lemma[lemma.lower()].add(offset)

    @cache
    def ancestors(self, offset: str) -> frozenset[str]:
        """`offset` and every synset above it, on every path."""
        out = {offset}
        for parent in self.parents[offset]:
            out |= self.ancestors(parent)
        return frozenset(out)

    def synset(self, offset: str) -> str:
        return ", ".join(self.lemmas[offset])


def _lemma(word: str) -> str:
    """A lemma as data.noun writes it ('domestic_dog', 'Lord's_table', 'whale(p)') as read."""
    return word.split("(")[0].replace("_", " ")


def derive_wnids(wordnet: WordNet, names: list[str], labelled: dict[int, str]) -> list[str]:
    """Each class's synset offset (index i = class i), checked as the module says."""
    candidates = []
    for i, name in enumerate(names):
        senses = wordnet.by_lemma.get(RENAMED.get(name, name).lower(), set())
        if not senses:
            raise Derivation(f"class {i} {name!r}: no WordNet noun has this name")
        if i in CHOSEN:
            if CHOSEN[i] not in senses:
                raise Derivation(f"class {i} {name!r}: CHOSEN {CHOSEN[i]} is not a sense of it")
            senses = {CHOSEN[i]}
        candidates.append(sorted(senses))
    # The senses the order allows: above the previous class's lowest, below the next one's highest.
    low, previous = [], ""
    for i, senses in enumerate(candidates):
        fits = [s for s in senses if s > previous]
        if not fits:
            raise Derivation(f"class {i} {names[i]!r}: no sense of it follows class {i - 1}'s")
        low.append(fits[0])
        previous = fits[0]
    high, following = [""] * len(names), "99999999"
    for i in range(len(names) - 1, -1, -1):
        fits = [s for s in candidates[i] if s < following]
        if not fits:
            raise Derivation(f"class {i} {names[i]!r}: no sense of it precedes class {i + 1}'s")
        high[i] = following = fits[-1]
    offsets = []
    for i, senses in enumerate(candidates):
        fits = [s for s in senses if low[i] <= s <= high[i]]
        if len(fits) != 1:
            raise Derivation(f"class {i} {names[i]!r}: {len(fits)} senses fit the order "
                             f"({', '.join(fits)}); name ImageNet's in CHOSEN")
        offsets.append(fits[0])
    if any(a >= b for a, b in zip(offsets, offsets[1:])):
        raise Derivation("the wnids do not strictly increase with the class index")
    chosen = set(offsets)
    for i, offset in enumerate(offsets):
        above = (wordnet.ancestors(offset) - {offset}) & chosen
        if above:
            raise Derivation(f"class {i} {names[i]!r} lies under another class ({min(above)})")
        if i in labelled and labelled[i] != "n" + offset:
            raise Derivation(f"class {i} {names[i]!r}: n{offset}, the labelled photos say "
                             f"{labelled[i]}")
    return offsets


def derive_groups(wordnet: WordNet, names: list[str], offsets: list[str]) -> dict[str, dict]:
    """Each group's synset and classes, checked as the module says."""
    lowered = {n.lower() for n in names}
    out: dict[str, dict] = {}
    for name, offset in GROUPS + NOT_GROUPS:
        if name not in (lemma.lower() for lemma in wordnet.lemmas[offset]):
            raise Derivation(f"group {name!r}: not a lemma of {offset} ({wordnet.synset(offset)})")
        if name in lowered:
            raise Derivation(f"group {name!r}: a class has that name")
        if name in out:
            raise Derivation(f"group {name!r}: twice")
        members = [i for i, o in enumerate(offsets) if offset in wordnet.ancestors(o)]
        if len(members) < 2:
            raise Derivation(f"group {name!r}: {len(members)} classes; a group has two or more")
        out[name] = {"wnid": "n" + offset, "synset": wordnet.synset(offset), "classes": members}
    if out["dog"]["classes"] != list(DOG_BREEDS):
        raise Derivation(f"group 'dog': {len(out['dog']['classes'])} classes, not the 118 breeds")
    return out


def derive_words(wordnet: WordNet, names: list[str], offsets: list[str],
                 groups: dict[str, dict]) -> dict[str, list[int]]:
    """word -> the classes it may mean (HINTS): no class's or group's name."""
    taken = {n.lower() for n in names} | set(groups)
    words: dict[str, set[int]] = defaultdict(set)
    for i, offset in enumerate(offsets):
        for lemma in wordnet.lemmas[offset]:
            words[lemma.lower()].add(i)
    for hint in HINTS:
        members = {i for i, o in enumerate(offsets) if hint in wordnet.ancestors(o)}
        if not members:
            raise Derivation(f"HINTS: no class lies under {hint} ({wordnet.synset(hint)})")
        for lemma in wordnet.lemmas[hint]:
            words[lemma.lower()] |= members
    return {w: sorted(words[w]) for w in sorted(words) if w not in taken}


def labelled_photos(path: Path) -> dict[int, str]:
    """class index -> wnid of the shared labelled photos, if they are there."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {int(row["class_index"]): row["wnid"] for row in csv.DictReader(f)}


def render(offsets: list[str], groups: dict[str, dict], words: dict[str, list[int]]) -> str:
    """The file: a JSON object, one line per group and per word (diffs stay readable)."""
    watchable = {n: g for n, g in groups.items() if n not in dict(NOT_GROUPS)}
    people = groups["person"]

    def lines(items: dict) -> str:
        return ",\n".join(f"    {json.dumps(k)}: {json.dumps(v, separators=(', ', ': '))}"
                           for k, v in items.items())

    wnids = [f"n{o}" for o in offsets]
    rows = ",\n".join("    " + ", ".join(json.dumps(w) for w in wnids[i:i + 8])
                      for i in range(0, len(wnids), 8))
    return (
        "{\n"
        f'  "about": {json.dumps(ABOUT)},\n'
        f'  "groups": {{\n{lines(watchable)}\n  }},\n'
        f'  "people": {json.dumps(people, separators=(", ", ": "))},\n'
        f'  "words": {{\n{lines(words)}\n  }},\n'
        f'  "wnids": [\n{rows}\n  ]\n'
        "}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="imagenet_groups.py", description=__doc__.splitlines()[0])
    ap.add_argument("--wordnet", type=Path, default=WORDNET,
                    help=f"folder of WordNet 3.0's data.noun (default {WORDNET})")
    ap.add_argument("--out", type=Path, default=OUT, help=f"file to write (default {OUT})")
    ap.add_argument("--check", action="store_true",
                    help="write nothing: exit 1 if the file differs from a fresh derivation")
    args = ap.parse_args(argv)
    if not (args.wordnet / "data.noun").is_file():
        print(f"imagenet_groups.py: no WordNet at {args.wordnet} (apt-get install wordnet-base)",
              file=sys.stderr)
        return 2
    names = NAMES.read_text().splitlines()
    wordnet = WordNet(args.wordnet)
    labelled = labelled_photos(LABELLED)
    try:
        offsets = derive_wnids(wordnet, names, labelled)
        groups = derive_groups(wordnet, names, offsets)
        words = derive_words(wordnet, names, offsets, groups)
    except Derivation as e:
        print(f"imagenet_groups.py: {e}", file=sys.stderr)
        return 1
    text = render(offsets, groups, words)
    checked = f"{len(labelled)} labelled photos agree" if labelled else \
        f"no {LABELLED} to check against"
    if args.check:
        same = args.out.is_file() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'differs from a fresh derivation'} "
              f"({checked})")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out}: 1000 wnids ({checked}), {len(GROUPS)} groups, {len(words)} words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
