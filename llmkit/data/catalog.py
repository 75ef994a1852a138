"""The data sets shipped under the repository's ``data/`` folder, and where each came from.

Each ``DataSet`` names its task, its local files (with record counts, checked by the tests), its
license with a commercial-use flag, and its upstream: files at a pinned commit of a GitHub
repository, each pinned by content hash, or a whole repository to clone (MedQuAD's XML tree, the
FOMC minutes). ``llmkit data get`` downloads the upstream files and checks them against the pins.

Pins. Every upstream file carries its SHA-256 and its git blob SHA-1 (the object id that git, and
the data set's SOURCE.md, give it: sha1 of ``b"blob <size>\\0" + content``). For byte-identical
copies (``identical=True``) both are the shipped file's, decompressed, and the tests recompute them
from the shipped bytes. For converted copies (SST-2's reordered columns, WNUT-17's train breaks,
files taken out of a zip, the SCOTUS .rda) the SHA-256 was computed from the git object at the
pinned commit, fetched once from a snapshot of the upstream repository, after checking that its
blob SHA-1 equals the one SOURCE.md records; the blob SHA-1 is the independent check.

Standard library only (L0): `llmkit data list` must not load torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import LlmkitError

# the repository's data/ folder (like tasks/, it exists in a checkout, not in an installed wheel)
DATA_DIR = Path(__file__).resolve().parents[2] / "data"
RAW_BASE = "https://raw.githubusercontent.com"
COMMERCIAL = ("yes", "no", "unclear")


@dataclass(frozen=True)
class LocalFile:
    """A shipped file, relative to data/. ``records`` counts lines, rows or sentences (None: metadata)."""

    path: str
    records: int | None = None


@dataclass(frozen=True)
class UpstreamFile:
    """One upstream file at a pinned commit: raw.githubusercontent.com/REPO/COMMIT/PATH.

    ``identical`` names the shipped file that is a byte-identical copy (decompressed), else None.
    """

    repo: str
    commit: str
    path: str
    size: int
    sha256: str
    git_blob: str
    identical: str | None = None

    def url(self, base: str = RAW_BASE) -> str:
        """The file's URL under ``base`` (the origin, or a mirror laid out the same way)."""
        return f"{base.rstrip('/')}/{self.repo}/{self.commit}/{self.path}"

    @property
    def name(self) -> str:
        """The file name a download is saved under."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class UpstreamRepo:
    """An upstream that is a whole repository (a tree of many files): clone it at ``commit``."""

    repo: str
    commit: str

    def clone_command(self) -> str:
        folder = self.repo.split("/")[1]
        return f"git clone https://github.com/{self.repo} && git -C {folder} checkout {self.commit}"


@dataclass(frozen=True)
class DataSet:
    """A shipped data set: where it is, what it is for, its license, and its upstream."""

    name: str
    task: str
    folder: str  # relative to data/
    source: str  # the SOURCE.md describing it, relative to data/
    files: tuple[LocalFile, ...]
    unit: str  # what ``records`` counts
    license: str
    commercial: str  # "yes" | "no" | "unclear"
    upstream: tuple[UpstreamFile, ...] | UpstreamRepo

    def records(self) -> str:
        """The record counts of the data files, e.g. ``67,349 / 872 / 1,821 rows``."""
        counts = [f"{f.records:,}" for f in self.files if f.records is not None]
        return f"{' / '.join(counts)} {self.unit}"

    def size_on_disk(self, root: Path | None = None) -> int:
        """Bytes of the shipped files (compressed as shipped); missing files count 0."""
        root = DATA_DIR if root is None else root
        return sum(os.path.getsize(root / f.path) for f in self.files if (root / f.path).is_file())


# ---- the catalog -----------------------------------------------------------------------------------
_SST2 = ("awake020/pytorch_Bert_sst2", "ce2ab1719d32182e6233b24b2de246bd32814fde")
_RT = ("dennybritz/cnn-text-classification-tf", "18762b459e21d9c70e5c242f8d43fc4e6db37a0d")
_WNUT = ("leondz/emerging_entities_17", "e52a2d2a71ac1a051ca2d532eef28653c5c02603")
_DIALOGSUM = "cylnlp/dialogsum"

DATASETS: tuple[DataSet, ...] = (
    DataSet(
        name="tinyshakespeare",
        task="LM pretraining (characters, words)",
        folder="tinyshakespeare",
        source="tinyshakespeare/SOURCE.md",
        files=(LocalFile("tinyshakespeare/input.txt.gz", 40_000),),
        unit="lines",
        license="public domain text; repo MIT",
        commercial="yes",
        upstream=(
            UpstreamFile(
                "karpathy/char-rnn",
                "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e",
                "data/tinyshakespeare/input.txt",
                1_115_394,
                "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                "7dcb3a2d4cc3b48b6283dd46870bfeb78f88aac9",
                identical="tinyshakespeare/input.txt.gz",
            ),
        ),
    ),
    DataSet(
        name="sst2",
        task="sentiment classification",
        folder="sentiment/sst2",
        source="sentiment/SOURCE.md",
        files=(
            LocalFile("sentiment/sst2/train.tsv.gz", 67_349),
            LocalFile("sentiment/sst2/dev.tsv", 872),
            LocalFile("sentiment/sst2/test.tsv", 1_821),
        ),
        unit="rows (train/dev/test)",
        license="none stated (SST, GLUE)",
        commercial="unclear",
        # converted: columns reordered, -lrb-/-rrb- replaced (sentiment/SOURCE.md)
        upstream=(
            UpstreamFile(
                *_SST2,
                "SST-2/train.tsv",
                3_806_081,
                "e981ceb4fe6c9acd1c79851d0d091b9e78103f1f2a399ca83dda27915d41c56c",
                "16a1dae29e39e0b50ee67cbd4de91e4cde0bbaf7",
            ),
            UpstreamFile(
                *_SST2,
                "SST-2/dev.tsv",
                94_414,
                "84207e6be5873fb18db798cc6faec86871f5a426554650ff64a1c34e87665f6f",
                "c7ac2a080683e24c82817b1096b9f80e615425d1",
            ),
            UpstreamFile(
                *_SST2,
                "SST-2/test.tsv",
                193_576,
                "fcd46f967b7b8efd8b5398481dadf873886298d092195167af907fd532e81e1c",
                "0e4a87b7eeb517c566d3e5f2b59abcd0f53d3053",
            ),
        ),
    ),
    DataSet(
        name="rt-polarity",
        task="sentiment classification",
        folder="sentiment/rt-polarity",
        source="sentiment/SOURCE.md",
        files=(
            LocalFile("sentiment/rt-polarity/rt-polarity.pos.gz", 5_331),
            LocalFile("sentiment/rt-polarity/rt-polarity.neg.gz", 5_331),
        ),
        unit="lines (pos/neg)",
        license="none stated",
        commercial="unclear",
        upstream=(
            UpstreamFile(
                *_RT,
                "data/rt-polaritydata/rt-polarity.pos",
                626_395,
                "4134882974a28d0c7b5151256f0e33a6169984ee7372c279e673f1114f475d58",
                "16fe13880ebd3241c5e8a485d31588ac2884d6d7",
                identical="sentiment/rt-polarity/rt-polarity.pos.gz",
            ),
            UpstreamFile(
                *_RT,
                "data/rt-polaritydata/rt-polarity.neg",
                612_506,
                "2d11cfbc790f1cd96d78339f41ce53ced1efa83cd22d37d6788fa3fe3d17e2fd",
                "c3a869462ce54dbb10b05f6a32e0869b8102f94c",
                identical="sentiment/rt-polarity/rt-polarity.neg.gz",
            ),
        ),
    ),
    DataSet(
        name="fra-eng",
        task="translation (French-English)",
        folder="translation/fra-eng",
        source="translation/SOURCE.md",
        files=(LocalFile("translation/fra-eng/fra.txt.gz", 142_787), LocalFile("translation/fra-eng/_about.txt")),
        unit="pairs",
        license="CC BY 2.0",
        commercial="yes",
        # converted: fra.txt and _about.txt were taken out of this zip unchanged
        upstream=(
            UpstreamFile(
                "genimind/seq2seq",
                "4f3f8eb0adde54fcc8b89394336b002e7961244c",
                "fra-eng.zip",
                2_951_390,
                "16c4f7d0df9e7c5e6c54cdb0447f3f4a18a55052ff5e2e0b27dd4a06c0e49d04",
                "c8be373a2f702bfd94d4bba46d51c31c5db98bfb",
            ),
        ),
    ),
    DataSet(
        name="dialogsum",
        task="dialogue summarisation",
        folder="dialogsum",
        source="dialogsum/SOURCE.md",
        files=(
            LocalFile("dialogsum/dialogsum.train.jsonl.gz", 12_460),
            LocalFile("dialogsum/dialogsum.dev.jsonl.gz", 500),
            LocalFile("dialogsum/dialogsum.test.jsonl.gz", 500),
        ),
        unit="dialogues (train/dev/test)",
        license="CC BY-NC-SA 4.0",
        commercial="no",
        upstream=(
            # converted: train was read out of this May-2021 zip (dict reprs rewritten as JSON)
            UpstreamFile(
                _DIALOGSUM,
                "67b15f6439b42d419f6626aa2a2e5b07e3aa4ea9",
                "DialogSum_Data.zip",
                4_145_589,
                "640e43ee9a208f79618de9ce8f3dd2b56fdbb5fe81e619189fbba033254387f4",
                "0eafb01224b4ba39c4c92a94d6481e9c4f1a8f24",
            ),
            UpstreamFile(
                _DIALOGSUM,
                "848cc8c05e0a04def79326539de827f1b28786a0",
                "DialogSum_Data/dialogsum.dev.jsonl",
                471_830,
                "436721e0a3571eef7072964f80e042fb151d8c6178db1a688ce8f803bbf0a13f",
                "de762eea17e5e2464e221ac9a1cf5c7c64eec655",
                identical="dialogsum/dialogsum.dev.jsonl.gz",
            ),
            UpstreamFile(
                _DIALOGSUM,
                "848cc8c05e0a04def79326539de827f1b28786a0",
                "DialogSum_Data/dialogsum.test.jsonl",
                639_707,
                "6de36eca7e7b9b10975fd5ea3f47391df172d8b3c15d03d84d763cbaab015fda",
                "1975a852f57a07f93fbabe68841c3328e3057f65",
                identical="dialogsum/dialogsum.test.jsonl.gz",
            ),
        ),
    ),
    DataSet(
        name="wnut17",
        task="NER (BIO tags, 6 types)",
        folder="ner/wnut17",
        source="ner/SOURCE.md",
        files=(
            LocalFile("ner/wnut17/train.conll.gz", 3_394),
            LocalFile("ner/wnut17/dev.conll", 1_009),
            LocalFile("ner/wnut17/test.conll", 1_287),
        ),
        unit="sentences (train/dev/test)",
        license="CC BY 4.0",
        commercial="yes",
        upstream=(
            # converted: whitespace-only sentence breaks became empty lines (ner/SOURCE.md)
            UpstreamFile(
                *_WNUT,
                "wnut17train.conll",
                493_781,
                "731820e13f71af324c6b55a1575ec2ce59fbaa2a0806f8f0400b98d56cd6a7a5",
                "f492698d4776475fd62851998b7b3623c416c92f",
            ),
            UpstreamFile(
                *_WNUT,
                "emerging.dev.conll",
                114_749,
                "e053b752b8155113ca66e7db08af5f2f5f43ab993694e4774f1ec5bad42312d8",
                "128e929f695c9f7499a8e652ee46cd505848e34e",
                identical="ner/wnut17/dev.conll",
            ),
            UpstreamFile(
                *_WNUT,
                "emerging.test.annotated",
                192_425,
                "2aa79b764e56ec9264a1b30fdd9b70195bd00ff400b62edd8f399d5f13c178f0",
                "a599ac827c810886f53978afca5596a9ab1ef4a6",
                identical="ner/wnut17/test.conll",
            ),
        ),
    ),
    DataSet(
        name="legal_scotus",
        task="domain pretraining: legal",
        folder="domain/legal_scotus",
        source="domain/legal_scotus/SOURCE.md",
        files=(
            LocalFile("domain/legal_scotus/scotus_ot2019.txt.gz", 210),
            LocalFile("domain/legal_scotus/scotus_ot2019.meta.tsv"),
        ),
        unit="opinions",
        license="public domain (US gov.)",
        commercial="yes",
        # converted: the R data object, read with `rdata` and flattened to one opinion per line
        upstream=(
            UpstreamFile(
                "JCRascal/opiniontext",
                "0ff44ce8725b6081c3bd2a31e0d97198ca48d802",
                "data/opinions_2019.rda",
                1_080_261,
                "4d4a3286352e91e746cd2963c60ee2b6b965011595fcac46af6802361b001dbe",
                "9a6e1fc0cf6b90118fcee2fc36f288108541e9f9",
            ),
        ),
    ),
    DataSet(
        name="medical_medquad",
        task="domain pretraining: medical",
        folder="domain/medical_medquad",
        source="domain/medical_medquad/SOURCE.md",
        files=(
            LocalFile("domain/medical_medquad/medquad.txt.gz", 5_540),
            LocalFile("domain/medical_medquad/medquad.meta.tsv.gz"),
            LocalFile("domain/medical_medquad/LICENSE.txt"),
        ),
        unit="Q+A documents",
        license="CC BY 4.0",
        commercial="yes",
        upstream=UpstreamRepo("abachaa/MedQuAD", "577bd37b96c02d1833b2c9eed2de9f96964e96cb"),
    ),
    DataSet(
        name="finance_fomc",
        task="domain pretraining: finance",
        folder="domain/finance_fomc",
        source="domain/finance_fomc/SOURCE.md",
        files=(
            LocalFile("domain/finance_fomc/fomc_minutes.txt.gz", 248),
            LocalFile("domain/finance_fomc/fomc_minutes.meta.tsv"),
        ),
        unit="minutes",
        license="US gov. (not verified)",
        commercial="unclear",
        upstream=UpstreamRepo("sophia-jihye/Collecting_FOMC_Minutes", "ea2b8e16b3e004d02b7b6954ce76857c371799b1"),
    ),
)


def names() -> list[str]:
    """The catalog's set names, in catalog order."""
    return [d.name for d in DATASETS]


def get_dataset(name: str) -> DataSet:
    """The catalog entry called ``name``; an unknown name lists the known ones."""
    for dataset in DATASETS:
        if dataset.name == name:
            return dataset
    raise LlmkitError(f"unknown data set {name!r}", f"known: {', '.join(names())} (see `llmkit data list`)")


# ---- listing -----------------------------------------------------------------------------------------
# license markers of `llmkit data list`, and the footnotes that explain them
MARKS = {"no": "*", "unclear": "?"}
FOOTNOTES = {
    "no": "* non-commercial license: research and personal use only",
    "unclear": "? license unclear (none stated, or not verified): check before any commercial use",
}


def describe(dataset: DataSet, root: Path | None = None) -> dict:
    """A JSON-ready description: names, task, files, sizes, records, license and upstream."""
    upstream = dataset.upstream
    if isinstance(upstream, UpstreamRepo):
        origin: dict = {"repository": upstream.repo, "commit": upstream.commit, "clone": upstream.clone_command()}
    else:
        origin = {
            "files": [
                {
                    "url": pin.url(),
                    "size": pin.size,
                    "sha256": pin.sha256,
                    "git_blob_sha1": pin.git_blob,
                    "identical_to": pin.identical,
                }
                for pin in upstream
            ]
        }
    return {
        "name": dataset.name,
        "task": dataset.task,
        "folder": f"data/{dataset.folder}",
        "source": f"data/{dataset.source}",
        "files": [{"path": f"data/{f.path}", "records": f.records} for f in dataset.files],
        "size_on_disk": dataset.size_on_disk(root),
        "records": dataset.records(),
        "license": dataset.license,
        "commercial_use": dataset.commercial,
        "upstream": origin,
    }


def format_table(datasets: tuple[DataSet, ...] = DATASETS, root: Path | None = None) -> str:
    """The shipped sets as an aligned table, licenses marked and explained in footnotes."""
    header = ("name", "task", "size", "records", "license")
    rows = [
        (
            d.name,
            d.task,
            f"{d.size_on_disk(root) / 1e6:.1f} MB",
            d.records(),
            d.license + (f" {MARKS[d.commercial]}" if d.commercial in MARKS else ""),
        )
        for d in datasets
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    total = sum(d.size_on_disk(root) for d in datasets)
    lines.append(f"{len(datasets)} data sets, {total / 1e6:.1f} MB on disk under data/ (.gz: gzip -9, read as text)")
    lines += [FOOTNOTES[flag] for flag in ("no", "unclear") if any(d.commercial == flag for d in datasets)]
    return "\n".join(lines)
