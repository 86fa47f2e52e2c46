"""Manifest diagnostics: duration profile, split sizes, speakers and language, problems and leakage.

The library form of the seed plan's `manifest_diagnostics.py`; `render_markdown` lays the
tables out as the plan's "Diagnostics Results" section does.

The language is `--language`, else what the import report beside the manifest records
(`moonlora import --language`), else unknown. Transcripts that look un-normalized are problems:
a corpus mostly in capitals (`all_caps_transcript`, each such row; scoring ignores case, but a model
trained on it learns to write capitals) and one that writes numbers both as digits and spelled out
(`number_style_mix`, each row with digits; "12" and "twelve" are different words to the model, and
only English scoring maps one onto the other).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import soundfile as sf

from moonlora import markdown, outputs
from moonlora.data.leakage import Leak, find_leaks
from moonlora.data.manifest import Manifest, ManifestError, Utterance, load_manifest
from moonlora.data.splits import split_train_val
from moonlora.configs import DEFAULT_LANGUAGE, ScoringConfig
from moonlora.data.importers.run import REPORT_NAME as IMPORT_REPORT
from moonlora.data.text import normalize
from moonlora.errors import InputError

SHORT_SECONDS = 1.0  # Moonshine hallucinates on clips shorter than this ...
LONG_SECONDS = 30.0  # ... and longer than this
DURATION_TOLERANCE = 0.1  # seconds between the declared duration and the file header
DEFAULT_SEED = 42
MAX_LINES_SHOWN = 10
ALL_CAPS_SHARE = 0.5  # a corpus is "mostly all caps" when more than this share of its cased transcripts is
# Spelled-out numbers per language ("one" left out of English: "no one", "the one" are no numbers).
NUMBER_WORDS = {
    "en": "zero two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
          "eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million",
    "es": "dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince veinte treinta cuarenta "
          "cincuenta sesenta setenta ochenta noventa cien ciento mil",
    "de": "zwei drei vier fünf sechs sieben acht neun zehn elf zwölf zwanzig dreißig vierzig fünfzig sechzig "
          "siebzig achtzig neunzig hundert tausend",
    "fr": "deux trois quatre cinq six sept huit neuf dix onze douze vingt trente quarante cinquante soixante cent "
          "mille",
}
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class DiagnoseConfig:
    manifests: tuple[str, ...]
    max_seconds: float
    thresholds: tuple[float, ...] = (5, 8, 10, 15, 20)
    seed: int = DEFAULT_SEED
    val_fraction: float = 0.2
    json_path: str | None = None
    language: str | None = None  # None: an import report's, else unknown

    def __post_init__(self) -> None:
        object.__setattr__(self, "manifests", tuple(str(m) for m in self.manifests))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if not self.manifests:
            raise InputError("give at least one manifest")
        if not (math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise InputError(f"max_seconds must be a positive number, got {self.max_seconds}")
        if not self.thresholds:
            raise InputError("give at least one duration threshold")
        if any(not (math.isfinite(t) and t > 0) for t in self.thresholds):
            raise InputError(f"thresholds must be positive numbers, got {list(self.thresholds)}")
        if any(a >= b for a, b in zip(self.thresholds, self.thresholds[1:])):
            raise InputError(f"thresholds must be strictly increasing, got {list(self.thresholds)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        if self.language is not None:
            ScoringConfig(language=self.language)  # the one check of a language code


@dataclass(frozen=True)
class Problem:
    kind: str
    manifest: str
    line: int | None  # None when it concerns the whole manifest
    detail: str


@dataclass(frozen=True)
class DurationProfile:
    samples: int
    mean_seconds: float
    thresholds: tuple[float, ...]
    at_most: tuple[int, ...]  # clips with duration <= each threshold

    def percent(self, index: int) -> float:
        return 100.0 * self.at_most[index] / self.samples if self.samples else 0.0

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "mean_seconds": self.mean_seconds,
            "at_most": [
                {"seconds": t, "count": c, "percent": self.percent(i)}
                for i, (t, c) in enumerate(zip(self.thresholds, self.at_most))
            ],
        }


@dataclass(frozen=True)
class SplitSizes:
    filtered: int
    train: int
    val: int
    method: str
    reason: str
    val_speakers: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class TextStyle:
    """How the transcripts are written: counts behind the un-normalized-text problems."""

    transcripts: int
    cased: int  # transcripts with a cased letter
    all_caps: int  # of those, written in capitals only
    with_digits: int
    with_spelled_numbers: int  # holding a number word of the language (English when unknown)

    @property
    def mostly_all_caps(self) -> bool:
        return self.cased > 0 and self.all_caps / self.cased > ALL_CAPS_SHARE

    @property
    def mixed_numbers(self) -> bool:
        return self.with_digits > 0 and self.with_spelled_numbers > 0


@dataclass
class ManifestReport:
    manifest: str
    loaded: bool
    profile: DurationProfile | None = None
    split: SplitSizes | None = None
    sample_rates: dict[int, int] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    speakers: int | None = None  # distinct speakers; None when no row names one
    language: str | None = None
    language_source: str | None = None  # "--language" or the import report's path
    text_style: TextStyle | None = None

    def to_dict(self) -> dict:
        return {
            "manifest": self.manifest,
            "loaded": self.loaded,
            "profile": self.profile.to_dict() if self.profile else None,
            "split": asdict(self.split) if self.split else None,
            "sample_rates": {str(k): v for k, v in self.sample_rates.items()},
            "channels": {str(k): v for k, v in self.channels.items()},
            "problems": [asdict(p) for p in self.problems],
            "speakers": self.speakers, "language": self.language, "language_source": self.language_source,
            "text_style": asdict(self.text_style) if self.text_style else None,
        }


@dataclass
class DiagnosisReport:
    config: DiagnoseConfig
    manifests: list[ManifestReport]
    leaks: list[Leak]

    @property
    def problems(self) -> list[Problem]:
        return [p for m in self.manifests for p in m.problems]

    @property
    def unloaded(self) -> list[str]:
        return [m.manifest for m in self.manifests if not m.loaded]

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "manifests": [m.to_dict() for m in self.manifests],
            "leaks": [asdict(leak) for leak in self.leaks],
        }


def fmt_seconds(value: float) -> str:
    """8.0 -> "8", 7.5 -> "7.5" (as the seed writes "--max-seconds 8")."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def source_command(config: DiagnoseConfig) -> str:
    """The command that reproduces the split-size rows."""
    parts = ["uv run moonlora diagnose --manifests", *(shlex.quote(m) for m in config.manifests)]
    parts += ["--max-seconds", fmt_seconds(config.max_seconds)]
    if config.seed != DEFAULT_SEED:
        parts += ["--seed", str(config.seed)]
    if config.val_fraction != DiagnoseConfig.val_fraction:
        parts += ["--val-fraction", f"{config.val_fraction:g}"]
    return " ".join(parts)


def duration_profile(durations: list[float], thresholds: tuple[float, ...]) -> DurationProfile:
    mean = sum(durations) / len(durations) if durations else 0.0
    counts = tuple(sum(d <= t for d in durations) for t in thresholds)
    return DurationProfile(len(durations), mean, tuple(thresholds), counts)


def split_sizes(utterances: list[Utterance], config: DiagnoseConfig) -> SplitSizes:
    kept = [u for u in utterances if u.duration <= config.max_seconds]
    split = split_train_val(kept, config.val_fraction, config.seed)
    return SplitSizes(
        filtered=len(kept), train=len(split.train), val=len(split.val), method=split.method,
        reason=split.reason, val_speakers=tuple(split.val_speakers), source=source_command(config),
    )


def duration_problems(manifest: Manifest) -> list[Problem]:
    """Clips Moonshine handles badly, and declared durations the file header contradicts."""
    name, found = str(manifest.path), []
    for u in manifest.utterances:
        # The model hears the file, so the length checks use the header's duration.
        if u.file_duration < SHORT_SECONDS:
            found.append(Problem("too_short", name, u.line, f"{u.file_duration:.2f} s < {SHORT_SECONDS:g} s"))
        elif u.file_duration > LONG_SECONDS:
            found.append(Problem("too_long", name, u.line, f"{u.file_duration:.2f} s > {LONG_SECONDS:g} s"))
        if abs(u.duration - u.file_duration) > DURATION_TOLERANCE:
            found.append(Problem(
                "duration_mismatch", name, u.line,
                f"declared {u.duration:.2f} s, file header {u.file_duration:.2f} s",
            ))
    return found


def audio_formats(manifest: Manifest) -> tuple[dict[int, int], dict[int, int], list[Problem]]:
    """Counts per sample rate and channel count; clips outside the most common format are listed."""
    name, formats, problems = str(manifest.path), {}, []
    for u in manifest.utterances:
        try:
            info = sf.info(str(u.audio_filepath))
        except (sf.LibsndfileError, RuntimeError, TypeError, OSError) as error:
            problems.append(Problem("unreadable_audio", name, u.line, f"{u.audio_filepath}: {error}"))
            continue
        formats[u.line] = (int(info.samplerate), int(info.channels))
    rates = Counter(rate for rate, _ in formats.values())
    channels = Counter(ch for _, ch in formats.values())
    combos = Counter(formats.values())
    if len(combos) > 1:
        common = combos.most_common(1)[0][0]
        for line, combo in formats.items():
            if combo != common:
                problems.append(Problem(
                    "format_mix", name, line,
                    f"{_fmt_format(combo)} (most clips: {_fmt_format(common)})",
                ))
    return dict(sorted(rates.items())), dict(sorted(channels.items())), problems


def _fmt_format(combo: tuple[int, int]) -> str:
    return f"{combo[0]} Hz, {combo[1]} ch"


def duplicate_problems(manifest: Manifest, language: str | None = None) -> list[Problem]:
    """Rows repeating an earlier row's audio bytes or normalized transcript (the language's normalizer)."""
    name, found = str(manifest.path), []
    first_audio: dict[str, int] = {}
    first_text: dict[str, int] = {}
    for u in manifest.utterances:
        if u.audio_sha256 in first_audio:
            found.append(Problem("duplicate_audio", name, u.line, f"same audio as line {first_audio[u.audio_sha256]}"))
        else:
            first_audio[u.audio_sha256] = u.line
        text = normalize(u.text, language or DEFAULT_LANGUAGE)
        if not text:
            continue
        if text in first_text:
            found.append(Problem("duplicate_transcript", name, u.line, f"same transcript as line {first_text[text]}"))
        else:
            first_text[text] = u.line
    return found


def manifest_language(path: str, config: DiagnoseConfig) -> tuple[str | None, str | None]:
    """(language, where it came from): --language, else the import report beside the manifest."""
    if config.language is not None:
        return config.language, "--language"
    report = Path(path).parent / IMPORT_REPORT
    try:
        language = json.loads(report.read_text(encoding="utf-8")).get("language")
    except (OSError, ValueError, AttributeError):
        return None, None
    return (language, str(report)) if isinstance(language, str) and language else (None, None)


def speaker_count(manifest: Manifest) -> int | None:
    speakers = {u.speaker for u in manifest.utterances if u.speaker is not None}
    return len(speakers) if speakers else None


def _number_words(language: str | None) -> re.Pattern:
    words = NUMBER_WORDS.get(language or "en", NUMBER_WORDS["en"]).split()
    return re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE)


def text_style(manifest: Manifest, language: str | None) -> tuple[TextStyle, list[Problem]]:
    """Counts of capitals, digits and spelled numbers, and a problem per row that makes the corpus look
    un-normalized (only when it does: mostly all caps, or digits beside spelled-out numbers)."""
    name, spelled = str(manifest.path), _number_words(language)
    rows = manifest.utterances
    cased = [u for u in rows if any(c.isupper() or c.islower() for c in u.text)]
    caps = [u for u in cased if u.text.isupper()]
    digits = [u for u in rows if _DIGIT.search(u.text)]
    worded = [u for u in rows if spelled.search(u.text)]
    style = TextStyle(len(rows), len(cased), len(caps), len(digits), len(worded))
    problems = []
    if style.mostly_all_caps:
        share = f"{len(caps)} of {len(cased)} transcripts in capitals only"
        problems += [Problem("all_caps_transcript", name, u.line, f"{_quote(u.text)} ({share}; moonlora import "
                             "--text-mode auto lowercases such a corpus)") for u in caps]
    if style.mixed_numbers:
        example = worded[0]
        problems += [Problem("number_style_mix", name, u.line,
                             f"digits in {_quote(u.text)}, while {len(worded)} transcript(s) spell numbers out "
                             f"(line {example.line}: {_quote(example.text)})") for u in digits]
    return style, problems


def _quote(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def diagnose_manifest(path: str, config: DiagnoseConfig) -> tuple[ManifestReport, Manifest | None]:
    """Everything about one manifest; an unloadable one becomes a problem, not an exception."""
    language, language_source = manifest_language(path, config)
    try:
        manifest = load_manifest(path, language or DEFAULT_LANGUAGE)
    except (ManifestError, OSError) as error:
        return ManifestReport(path, False, problems=[Problem("unloadable_manifest", path, None, str(error))]), None
    problems = [Problem(row.kind, path, row.line, row.reason) for row in manifest.skipped]
    rates, channels, format_problems = audio_formats(manifest)
    style, text_problems = text_style(manifest, language)
    problems += duration_problems(manifest) + format_problems + duplicate_problems(manifest, language) + text_problems
    problems.sort(key=lambda p: (p.line or 0, p.kind))
    report = ManifestReport(
        manifest=path, loaded=True,
        profile=duration_profile([u.duration for u in manifest.utterances], config.thresholds),
        split=split_sizes(manifest.utterances, config),
        sample_rates=rates, channels=channels, problems=problems,
        speakers=speaker_count(manifest), language=language, language_source=language_source, text_style=style,
    )
    return report, manifest


def diagnose(config: DiagnoseConfig) -> DiagnosisReport:
    """Diagnose every manifest in the config and look for leakage between them."""
    reports, loaded, seen = [], {}, set()
    for path in config.manifests:
        report, manifest = diagnose_manifest(path, config)
        reports.append(report)
        # The same file given twice (under any spelling) is not leakage.
        if manifest is not None and manifest.path.resolve() not in seen:
            seen.add(manifest.path.resolve())
            loaded[path] = manifest
    languages = {report.language for report in reports if report.loaded}
    # Transcripts compare under the manifests' one language; English when they name none or several.
    language = languages.pop() if len(languages) == 1 and None not in languages else DEFAULT_LANGUAGE
    return DiagnosisReport(config, reports, find_leaks(loaded, language))


def write_json(report: DiagnosisReport, path: str | Path) -> Path:
    """The report as strict JSON, atomically, signed as moonlora's (so `--overwrite` may replace it)."""
    path = Path(path)
    outputs.write_json(path, report.to_dict(), command="diagnose")
    return path


def run(config: DiagnoseConfig) -> tuple[DiagnosisReport, str]:
    """Diagnose, write the JSON when `config.json_path` is set, and return the markdown."""
    report = diagnose(config)
    if config.json_path:
        write_json(report, config.json_path)
    return report, render_markdown(report)


# ---- markdown ----------------------------------------------------------------------------


def _profile_table(report: DiagnosisReport) -> list[str]:
    header = ["Manifest", "Samples", "Mean (s)"] + [f"<={fmt_seconds(t)}s" for t in report.config.thresholds]
    rows = []
    for m in report.manifests:
        if m.profile is None:
            continue
        p = m.profile
        counts = [f"{c} ({p.percent(i):.1f}%)" for i, c in enumerate(p.at_most)]
        rows.append([f"`{m.manifest}`", str(p.samples), f"{p.mean_seconds:.2f}", *counts])
    return markdown.table(header, rows)


def _split_table(report: DiagnosisReport) -> list[str]:
    rows = [
        [f"`{m.manifest}`", str(s.filtered), str(s.train), str(s.val), s.method, f"`{s.source}`"]
        for m in report.manifests if (s := m.split) is not None
    ]
    return markdown.table(["Manifest", "Filtered", "Train", "Val", "Split", "Source"], rows)


def _format_table(report: DiagnosisReport) -> list[str]:
    rows = []
    for m in report.manifests:
        if m.loaded:
            rates = ", ".join(f"{r} Hz: {n}" for r, n in m.sample_rates.items())
            channels = ", ".join(f"{c} ch: {n}" for c, n in m.channels.items())
            rows.append([f"`{m.manifest}`", rates, channels])
    return markdown.table(["Manifest", "Sample rates", "Channels"], rows)


def _corpus_table(report: DiagnosisReport) -> list[str]:
    rows = []
    for m in report.manifests:
        if m.loaded:
            language = "unknown (give --language)" if m.language is None else \
                f"{m.language} ({'--language' if m.language_source == '--language' else 'import report'})"
            style = m.text_style
            rows.append([f"`{m.manifest}`", "-" if m.speakers is None else str(m.speakers), language,
                         f"{style.all_caps}/{style.cased}" if style else "-",
                         f"{style.with_digits} / {style.with_spelled_numbers}" if style else "-"])
    return markdown.table(["Manifest", "Speakers", "Language", "All caps", "Digits / spelled numbers"], rows)


def _problem_table(report: DiagnosisReport) -> list[str]:
    groups: dict[tuple[str, str], list[Problem]] = defaultdict(list)
    for p in report.problems:
        groups[(p.manifest, p.kind)].append(p)
    rows = []
    for (manifest, kind), problems in groups.items():
        lines = [str(p.line) for p in problems if p.line is not None][:MAX_LINES_SHOWN]
        more = len(problems) - len(lines) if lines else 0
        shown = ", ".join(lines) + (f" (+{more} more)" if more else "") if lines else "-"
        rows.append([f"`{manifest}`", kind, str(len(problems)), shown, markdown.text(problems[0].detail)])
    return markdown.table(["Manifest", "Kind", "Count", "Lines", "Example"], rows)


def _leak_table(report: DiagnosisReport) -> list[str]:
    rows = []
    for leak in report.leaks:
        a, b = leak.manifests
        examples = "; ".join(
            f"`{a}:{la}` = `{b}:{lb}` ({markdown.text(_short(item, leak.kind))})" for item, la, lb in leak.examples
        )
        rows.append([leak.kind, f"`{a}`, `{b}`", str(leak.shared), examples])
    return markdown.table(["Kind", "Manifests", "Shared", "Examples"], rows)


def _short(item: str, kind: str) -> str:
    if kind == "audio":
        return f"sha256 {item[:12]}"
    return item if len(item) <= 40 else item[:37] + "..."


def render_markdown(report: DiagnosisReport) -> str:
    """The seed plan's duration-profile and split-size tables, then problems and leakage."""
    config = report.config
    seconds = fmt_seconds(config.max_seconds)
    lines = [f"### Duration profile (max-seconds={seconds})", "", *_profile_table(report), ""]
    lines += [f"### Split sizes (max-seconds={seconds}, seed={config.seed})", "", *_split_table(report), ""]
    lines += ["### Audio formats", "", *_format_table(report), ""]
    lines += ["### Speakers, language and transcript style", "", *_corpus_table(report), ""]
    lines += ["### Problems", ""]
    lines += [*_problem_table(report), ""] if report.problems else ["none found", ""]
    lines += ["### Leakage", ""]
    lines += [*_leak_table(report), ""] if report.leaks else ["none found", ""]
    return "\n".join(lines)
