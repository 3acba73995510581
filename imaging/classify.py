"""Series classification into T1w / T2w / FLAIR / other, from header physics first, keywords second.

Physics (TR, TE, TI, flip angle, ScanningSequence, SequenceVariant, MRAcquisitionType, ImageType,
AngioFlag, and the vendor-private facts ingest reads: Philips' inversion delay and EPI factor, GE's
phase/magnitude flag) is what the scanner actually did, and it is written by the scanner, not by a
technologist; descriptions are free text that follow site habits ("anat_cz1", "ImageMRSERIES").
Keywords still matter: physics cannot tell a T1-weighted field-map magnitude or a time-of-flight
angiogram from a T1w spoiled gradient echo, and vendor names (MPRAGE, SPACE, CUBE, ...) disambiguate
borderline timings.

Decision rules, in order:
1. A keyword naming a non-structural acquisition (diffusion incl. a bare b-value, BOLD/task, field
   map, ASL, SWI/T2*, angio, PD, UTE/ZTE, double IR, MP2RAGE inversions, quantitative maps,
   spectroscopy) makes the series "other", even against T1-like physics (a field-map magnitude *is* a
   T1-ish gradient echo). Exception: a word naming an acquisition the physics rules out (a task or
   BOLD word on an inversion-prepared short-TE gradient echo, i.e. an MPRAGE acquired in a task
   session; a diffusion word on TE < 30 ms) does not override the physics; the series keeps its
   physics label and, unless another keyword supports it, goes to review.
2. Physics that is itself non-structural (EPI readout, EPI factor > 1, an echo-planar readout
   bandwidth, DIFFUSION/PHASE/PERFUSION ImageType or a private phase flag, AngioFlag, T2* gradient
   echo, ultra-short TE, PD timing or a flip angle below the Ernst angle, STIR, an inversion-prepared
   gradient echo repeated only every >= 4 s as MP2RAGE does) makes it "other".
3. Otherwise the physics label is used; a description keyword that agrees raises the confidence, one
   that names another structural class sends the series to review (the stronger side wins the label).
4. With no physics verdict, an explicit keyword decides with lower confidence; with nothing at all the
   series is "other" and goes to review. Keywords are looked for in SeriesDescription, then
   ProtocolName (Philips' "WIP" prefix and "SENSE" suffix stripped), then the sequence names.
5. A header with only timing (no sequence type, no description) keeps its physics label at reduced
   confidence, below the review threshold: a human confirms it.

Thresholds (ms) follow MR physics, not one dataset: T2-FLAIR nulls CSF with TI ~1.5-2.8 s and needs a
long TE; inversion-prepared short-TE sequences with TI 0.3-1.4 s (MPRAGE, BRAVO, T1-FLAIR) are T1w;
a spin echo with TR >= 1.8 s and TE >= 80 ms is T2w (ezBIDS uses TE > 100 ms; we accept 80-100 ms
only when the sequence type is known to be spin echo). A 3D T2-FLAIR (CUBE/SPACE/VISTA) nulls CSF
at TI 1.6-1.9 s and is FLAIR even where a dataset files it as T2w (see bench/classify_accuracy.py).
With TE < 1 ms (UTE, ZTE, PETRA) T2 decay plays no part and, without an inversion, neither does T1:
the image is proton-density weighted. A spoiled gradient echo is T1-weighted only when its flip angle
exceeds the Ernst angle of white matter (T1 ~1 s: arccos(exp(-TR/T1))); below it, it is PD-weighted.
Diffusion weighting needs an echo-planar readout, whose pixel bandwidth (>= 1400 Hz/px on all three
vendors) no 2D TSE reaches, and cannot be done with TE < 30 ms.

Confidence is the probability that the label is right for the evidence pattern that decided it
(`_CONFIDENCE`: agreement, physics alone, keyword alone, disagreement, ...), lowered for weak
physics and thin headers. The pattern values are set from how often each pattern is wrong, on the
labelled development rows and on the error families reported from other scanners (a pattern that
was never wrong on development rows is still not 1.0: development rows are not the hospital's).
`bench/classify_accuracy.py` prints the reliability table and expected calibration error. Anything
below `REVIEW_BELOW`, and every physics/keyword disagreement, goes to review.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imaging.dicom import SeriesHeader, header_from_dataset, scan_source

STRUCTURAL = ("T1w", "T2w", "FLAIR")
LABELS = (*STRUCTURAL, "other")
REVIEW_BELOW = 0.65
# Probability the label is right, by the evidence pattern that decided it (see the module notes).
_CONFIDENCE = {
    "agree": 0.97,  # physics and a keyword name the same structural class
    "other_agree": 0.97,  # non-structural physics and a non-structural keyword
    "other_keyword": 0.93,  # a non-structural keyword, physics undecided
    "other_over_structural": 0.9,  # a non-structural keyword against T1-like physics (field-map magnitude)
    "physics": 0.9,  # strong physics alone (scaled by its strength)
    "keyword": 0.8,  # an explicit keyword alone (scaled by its strength)
    "contradicted_keyword": 0.6,  # physics rules out what the only keyword says
    "disagree": 0.5,  # physics and keyword name different classes
    "nothing": 0.6,  # "other": most series a scanner writes are not T1w/T2w/FLAIR (always reviewed)
}
# Keyword families whose acquisitions physics can rule out: BOLD/task needs a T2*-weighted (long TE)
# echo-planar readout, diffusion weighting needs tens of ms of TE. An inversion-prepared short-TE
# gradient echo (MPRAGE) is neither, whatever the description says.
_NEEDS_LONG_TE = frozenset({"functional", "diffusion"})
_WM_T1_MS = 1000.0  # white-matter T1 at 1.5-3 T, for the Ernst angle


@dataclass(frozen=True)
class Classification:
    label: str  # "T1w" | "T2w" | "FLAIR" | "other"
    contrast_enhanced: bool
    confidence: float
    explanation: str
    needs_review: bool


@dataclass(frozen=True)
class _Evidence:
    label: str | None
    strength: float
    reason: str
    family: str = ""


_NONE = _Evidence(None, 0.0, "")


def _ernst_deg(tr_ms: float, t1_ms: float = _WM_T1_MS) -> float:
    """Flip angle of maximal signal for a spoiled gradient echo; T1 weighting needs more than this."""
    return math.degrees(math.acos(math.exp(-tr_ms / t1_ms)))


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g} ms"


# --------------------------------------------------------------------------------------------------
# Physics


_PHASE_TYPES = {"P", "PHASE", "R", "I", "REAL", "IMAGINARY", "PHASE MAP", "B0 MAP", "FIELD_MAP"}
_NON_STRUCTURAL_TYPES = {
    "DIFFUSION": "diffusion",
    "ADC": "diffusion",
    "TRACEW": "diffusion",
    "EADC": "diffusion",
    "PERFUSION": "perfusion",
    "ASL": "perfusion",
    "MOSAIC": "EPI mosaic (fMRI/DWI)",
    "SWI": "susceptibility-weighted",
    "MNIP": "susceptibility-weighted",
    "QSM": "susceptibility map",
    "MIP": "angiography projection",
    "PROTON_DENSITY": "proton density",
    "DENSITY": "proton density",
}


def _physics(h: SeriesHeader) -> _Evidence:
    """Label implied by acquisition parameters alone, with a strength in [0, 1]."""
    it = h.image_type
    for token in it:
        if token in _NON_STRUCTURAL_TYPES:
            return _Evidence("other", 0.9, f"ImageType {token} ({_NON_STRUCTURAL_TYPES[token]})")
    if any(t in _PHASE_TYPES for t in it[2:]):
        return _Evidence("other", 0.9, "ImageType marks a phase/real/imaginary image, not magnitude")
    if h.complex_part in ("PHASE", "REAL", "IMAGINARY"):
        return _Evidence("other", 0.9, f"{h.complex_part.lower()} image (vendor private image kind), not magnitude")
    if h.angio_flag or any(o.startswith("TOF") for o in h.scan_options):
        return _Evidence("other", 0.8, "the scanner flags an angiography acquisition (AngioFlag Y / TOF scan option)")
    seq = set(h.scanning_sequence)
    if "EP" in seq:
        return _Evidence("other", 0.9, "echo-planar readout (ScanningSequence EP: fMRI/DWI/field map)")
    if h.epi_factor is not None and h.epi_factor > 1:
        return _Evidence("other", 0.9, f"echo-planar readout (EPI factor {h.epi_factor}: fMRI/DWI/ASL)")
    tr, te, ti, fa = h.repetition_time, h.echo_time, h.inversion_time, h.flip_angle
    if te is None and tr is None:
        return _NONE
    bw = h.pixel_bandwidth
    if bw is not None and bw >= 1400 and te is not None and te >= 50 and h.mr_acquisition_type != "3D":
        return _Evidence("other", 0.8, f"pixel bandwidth {bw:g} Hz/px with TE {te:.4g} ms (echo-planar readout: DWI)")
    if te is not None and 0 < te < 1.0:
        if ti is not None and 300 <= ti < 1400:
            return _Evidence("T1w", 0.2, f"inversion-prepared ultra-short TE ({te:.3g} ms, TI {ti:.4g} ms)")
        return _Evidence("other", 0.85, f"ultra-short TE {te:.3g} ms (UTE/ZTE/PETRA: proton-density weighted)")
    timing = f"TR={_ms(tr)}, TE={_ms(te)}, TI={_ms(ti) if ti is not None else 'none'}"
    gre, se = "GR" in seq, "SE" in seq
    inferred = ""
    if not (gre or se):
        # ScanningSequence missing or vendor-specific (GE writes RM): infer the echo type from timing.
        if (te is not None and te < 6) or (tr is not None and tr < 100):
            gre, inferred = True, " (gradient echo inferred: TE < 6 ms or TR < 100 ms)"
        elif te is not None:
            se, inferred = True, " (spin echo assumed: sequence type unknown)"
    scale = 0.7 if inferred else 1.0
    ir = "IR" in seq or "IR" in h.scan_options or ti is not None

    def ev(label: str, strength: float, why: str) -> _Evidence:
        return _Evidence(label, round(strength * scale, 3), f"{why}, {timing}{inferred}")

    if ir and ti is not None and te is not None:
        if ti >= 1400 and te >= 70:
            return ev("FLAIR", 0.9, "inversion recovery with TI >= 1400 ms and TE >= 70 ms (fluid-nulled T2)")
        if ti >= 1400 and te < 30:
            return ev("other", 0.6, "long TI with short TE (PD-like inversion image, e.g. MP2RAGE INV2)")
        if 300 <= ti < 1400 and te < 30 and gre and tr is not None and tr >= 4000:
            # MPRAGE repeats every 1.5-3 s; MP2RAGE/MPnRAGE need >= 4 s for the second inversion image
            return ev("other", 0.6, "inversion-prepared gradient echo with TR >= 4000 ms (MP2RAGE inversion image)")
        if 300 <= ti < 1400 and te < 30:
            return ev("T1w", 0.9, "inversion-prepared, TI 300-1400 ms with short TE (MPRAGE/BRAVO/T1-FLAIR)")
        if ti < 300:
            return ev("other", 0.6, "inversion recovery with TI < 300 ms (STIR, fat-nulled)")
        return _Evidence(None, 0.0, f"inversion recovery with unusual timing, {timing}")
    if ir and te is not None and tr is not None:  # IR named but TI not stored (some Philips exports)
        if te >= 70 and tr >= 4000:
            return ev("FLAIR", 0.6, "inversion recovery (TI not stored) with TR >= 4000 ms and TE >= 70 ms")
        if te < 30:
            return ev("T1w", 0.6, "inversion recovery (TI not stored) with short TE")
    if gre and te is not None:
        if te >= 15:
            return ev("other", 0.8, "gradient echo with TE >= 15 ms (T2*-weighted: BOLD/SWI/T2*)")
        prepared = ti is not None or "MP" in h.sequence_variant
        below_ernst = tr is not None and tr >= 15 and fa is not None and not prepared and fa < _ernst_deg(tr)
        pd_by_flip = (
            f"spoiled gradient echo with flip angle {fa:g} deg below the Ernst angle "
            f"{_ernst_deg(tr):.3g} deg of white matter (PD-weighted)"
            if below_ernst and fa is not None and tr is not None
            else ""
        )
        if tr is not None and tr <= 50 and te < 10:
            if fa is not None and fa < 6:
                return ev("other", 0.6, f"gradient echo with flip angle {fa:g} deg < 6 (PD-weighted)")
            if "MTC" in h.sequence_variant:
                return ev("other", 0.6, "spoiled gradient echo with magnetization transfer (TOF angiography / MT)")
            etl = h.echo_train_length
            if etl is not None and 2 <= etl <= 16 and ti is None and "MP" not in h.sequence_variant:
                # A T1w FLASH/SPGR reads one echo per excitation; several echoes without a preparation
                # pulse are a multi-echo GRE for T2*/QSM/relaxometry (or a field map).
                return ev("other", 0.6, f"multi-echo gradient echo ({etl} echoes, no preparation: T2*/QSM)")
            if below_ernst:
                return ev("other", 0.7, pd_by_flip)
            if "MP" in h.sequence_variant:
                return ev("T1w", 0.9, "magnetization-prepared gradient echo with short TR/TE (T1 TFE/MPRAGE)")
            return ev("T1w", 0.75, "spoiled gradient echo with short TR/TE (T1-weighted)")
        if tr is not None and tr < 1000 and te < 10 and below_ernst:
            return ev("other", 0.6, pd_by_flip)
        if tr is not None and tr < 1000 and te < 10 and fa is not None and fa >= 40:
            return ev("T1w", 0.6, f"2D gradient echo, TR < 1000 ms, flip angle {fa:g} deg (T1 FLASH)")
        return _Evidence(None, 0.0, f"gradient echo with intermediate timing, {timing}")
    if se and te is not None and tr is not None:
        if tr >= 1800 and te >= 80:
            if inferred and te < 100:
                return _Evidence(None, 0.0, f"long TR, TE {te:.4g} ms < 100 with unknown sequence type, {timing}")
            return ev("T2w", 0.9 if te >= 100 else 0.75, "spin echo with long TR and TE >= 80 ms (T2-weighted)")
        if tr >= 1500 and te < 40:
            return ev("other", 0.6, "spin echo with long TR and short TE (PD-weighted)")
        if tr < 1000 and te < 30:
            return ev("T1w", 0.7, "spin echo with short TR/TE (T1-weighted)")
    return _Evidence(None, 0.0, f"no decisive timing, {timing}")


# --------------------------------------------------------------------------------------------------
# Keywords

_L, _R = r"(?<![a-z])", r"(?![a-z])"


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# (group name, pattern). Order matters only for the name reported in the explanation.
_OTHER_KEYWORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("localizer", _rx(rf"locali[sz]er|scout|survey|aahead|{_L}3[-_ ]?plane")),
    ("MP2RAGE/inversion image", _rx(rf"mp2rage|{_L}inv[-_ ]?[12]{_R}|{_L}uni[-_ ]?(den|images?)?{_R}")),
    (
        "diffusion",
        # b-values hide behind prefixes ("PU:Ax_b1000", "isoB1000", "1000b"), so no left boundary.
        _rx(
            rf"dwi|dti|dki|hardi|noddi|mddw|tensor|{_L}diff(usion)?|adc{_R}|tracew?{_R}|"
            rf"(?<!su)(?<![0-9])b[-_=]?[1-9][0-9]{{2,4}}(?![0-9])|(?<![0-9])[1-9][0-9]{{2,3}}[-_ ]?b{_R}|b[-_ ]?val"
        ),
    ),
    ("functional", _rx(rf"{_L}bold|fmri|epi{_R}|{_L}ep2d|{_L}rest(ing)?{_R}|{_L}task|n-?back|sbref|mbep")),
    (
        "field map",
        _rx(
            rf"field[-_ ]?map|{_L}fmap|{_L}b[01][-_ ]?map|{_L}tb1|gre_field|{_L}pepolar|{_L}topup|b0[-_ ]?shim|"
            rf"(?<![a-z0-9])b0(?![a-z0-9])"
        ),
    ),
    ("perfusion/ASL", _rx(rf"asl{_R}|{_L}perf(usion)?|{_L}cbf{_R}|{_L}dsc{_R}|{_L}dce{_R}|{_L}m0{_R}")),
    (
        "susceptibility/T2*",
        _rx(rf"{_L}swi|swan|{_L}t2[-_ ]?\*|t2[-_ ]?star|{_L}qsm|{_L}mnip|{_L}hemo|{_L}susc|{_L}t2s{_R}"),
    ),
    ("angiography", _rx(rf"{_L}tof{_R}|3d[-_ ]?tof|angio|{_L}mr[av]{_R}|venogra|inhance|phase[-_ ]?contrast")),
    ("proton density", _rx(rf"{_L}pd(w|fs)?{_R}|proton[-_ ]?density|dual[-_ ]?echo")),
    ("ultra-short TE", _rx(rf"{_L}(ute|zte|petra|silenz){_R}|ultra[-_ ]?short|zero[-_ ]?te")),
    ("double inversion recovery", _rx(rf"double[-_ ]?(ir|inversion)|{_L}dir{_R}")),
    (
        "quantitative map",
        _rx(rf"{_L}t[12][-_ ]?map|relaxometry|{_L}mese{_R}|{_L}vfa{_R}|despot|{_L}mt[-_ ]?(on|off|r)?{_R}|qalas"),
    ),
    ("spectroscopy", _rx(rf"{_L}svs{_R}|{_L}csi{_R}|spectro|{_L}mrs{_R}")),
    ("screen capture/report", _rx(rf"{_L}screen|{_L}report{_R}|phoenix|{_L}dose{_R}")),
)
_T1_FLAIR = _rx(rf"t1[-_ ]?w?[-_ ]?flair|flair[-_ ]?t1{_R}")
_FLAIR = _rx(rf"flair|dark[-_ ]?fluid|{_L}tirm|fluid[-_ ]?attenuat")
_T1 = _rx(
    rf"(?<![0-9])t1(w|[-_ ]?weighted)?(?![0-9a-z])|mp[-_ ]?rage|{_L}mpr{_R}|f?spgr|bravo|{_L}tfe{_R}|"
    rf"{_L}3d[-_ ]?t1|turbo[-_ ]?flash|{_L}vibe{_R}|{_L}fl[23]d"
)
_T2 = _rx(r"(?<![0-9])t2(w|[-_ ]?weighted)?(?![0-9a-z*])")
# Vendor readout names: they name a readout, not a contrast (T1 SPACE and PD TSE exist), so weak.
_T2_READOUT = _rx(rf"{_L}(tse|fse|frfse|ssfse|space|spc|cube|vista|blade|propeller|haste|rare){_R}")
# Siemens/GE sequence names (SequenceName/PulseSequenceName) for non-structural sequences.
# Old dcm2niix sidecars wrote Siemens' leading "*" as "_"; accept both.
_OTHER_SEQNAME = (
    ("EPI sequence", _rx(r"^[*_]?(ep|epfid|epse|ep_b|ep2d|epi)")),
    ("field-map sequence", _rx(r"^[*_]?fm[23]d")),
    ("SWI sequence", _rx(r"^[*_]?swi")),
    ("UTE/ZTE sequence", _rx(r"^[*_]?(ute|petra|zte)")),
    ("TOF angiography sequence (TONE ramp)", _rx(r"^[*_]?fl3d\d*r?_t\d")),
)
_SEQNAME_T1 = _rx(r"^[*_]?(tfl|fl3d)")
_SEQNAME_T2 = _rx(r"^[*_]?(tse|spc|tseb|spcr)(?!ir)")
# Vendor private sequence names (Philips scanning technique, GE pulse sequence name).
_VENDOR_OTHER = _rx(r"epi|^fe_?epi|^se_?epi|^fm|swan|^tof|pcasl|^asl|ute|zte|silenz")
_VENDOR_T1 = _rx(r"^t1tfe$|mp-?rage|bravo|efgre3d|spgr")
# Philips prefixes work-in-progress protocols with "WIP" and appends "SENSE"/"CLEAR" when parallel
# imaging is on; old converters also dropped the spaces ("WIPB0SENSE"). Strip both before matching.
_PHILIPS_DECORATION = (_rx(r"^wip[-_ ]*"), _rx(r"[-_ ]*(sense|clear)$"))

_CONTRAST = _rx(
    rf"{_L}(post|gd|gad\w*|gado\w*|contrast|ce|t1c|t1ce|km|kontrast){_R}|\+c{_R}|{_L}c\+|\+gd|mprage[-_ ]?ce"
)
_NO_CONTRAST = _rx(rf"{_L}(pre|non[-_ ]?contrast|nc|without|native){_R}")


def _clean(text: str) -> str:
    t = text.lower().strip()
    for rx in _PHILIPS_DECORATION:
        t = rx.sub("", t)
    return t


def _keyword_text(text: str, field: str, skip: frozenset[str] = frozenset()) -> _Evidence:
    t = _clean(text)
    if not t.strip():
        return _NONE
    for name, rx in _OTHER_KEYWORDS:
        if name in skip:
            continue
        m = rx.search(t)
        if m:
            return _Evidence("other", 0.9, f"'{m.group(0)}' in {field} ({name})", name)
    m = _T1_FLAIR.search(t)
    if m:
        return _Evidence("T1w", 0.8, f"'{m.group(0)}' in {field} (T1-weighted FLAIR)")
    m = _FLAIR.search(t)
    if m:
        return _Evidence("FLAIR", 0.8, f"'{m.group(0)}' in {field}")
    m1, m2 = _T1.search(t), _T2.search(t)
    if m1 and m2:
        return _Evidence(None, 0.0, f"both '{m1.group(0)}' and '{m2.group(0)}' in {field}")
    if m1:
        return _Evidence("T1w", 0.8, f"'{m1.group(0)}' in {field}")
    if m2:
        return _Evidence("T2w", 0.8, f"'{m2.group(0)}' in {field}")
    m = _T2_READOUT.search(t)
    if m:
        return _Evidence("T2w", 0.5, f"'{m.group(0)}' in {field} (T2-type readout name)")
    return _NONE


def _keywords(h: SeriesHeader, skip: frozenset[str] = frozenset()) -> _Evidence:
    """Keyword evidence: SeriesDescription first, then ProtocolName, then the sequence name.

    `skip` leaves out keyword families the physics has ruled out, so the next-best word can speak.
    """
    for text, field in ((h.series_description, "SeriesDescription"), (h.protocol_name, "ProtocolName")):
        ev = _keyword_text(text, field, skip)
        if ev.label is not None:
            return ev
    name = h.sequence_name.lower()
    for what, rx in _OTHER_SEQNAME:
        if rx.search(name):
            return _Evidence("other", 0.9, f"SequenceName '{h.sequence_name}' ({what})")
    if _SEQNAME_T1.search(name):
        return _Evidence("T1w", 0.5, f"SequenceName '{h.sequence_name}' (turbo FLASH/FLASH 3D)")
    if _SEQNAME_T2.search(name):
        return _Evidence("T2w", 0.5, f"SequenceName '{h.sequence_name}' (TSE/SPACE readout)")
    vendor = h.vendor_sequence.lower()
    if vendor and _VENDOR_OTHER.search(vendor):
        return _Evidence("other", 0.7, f"vendor sequence '{h.vendor_sequence}' (EPI/field map/SWI/ASL/angio)")
    if vendor and _VENDOR_T1.search(vendor):
        return _Evidence("T1w", 0.5, f"vendor sequence '{h.vendor_sequence}' (T1 turbo gradient echo)")
    return _NONE


def _contrast_enhanced(h: SeriesHeader) -> bool:
    agent = h.contrast_agent.strip().lower()
    if agent and agent not in ("none", "no", "n/a", "na", "0"):
        return True
    for text in (h.series_description, h.protocol_name):
        t = text.lower()
        if _CONTRAST.search(t) and not _NO_CONTRAST.search(t):
            return True
    return False


# --------------------------------------------------------------------------------------------------
# Decision


def classify_series(h: SeriesHeader) -> Classification:
    """Classify one series header. Pure function of the header: same header, same answer.

    The explanation names the evidence used ("T2w because spin echo with long TR and TE >= 80 ms,
    TR=3200 ms, TE=102 ms, TI=none; 't2' in SeriesDescription"), so a reviewer can see why.
    """
    label, pattern, why, scale = _decide(h)
    conf = _CONFIDENCE[pattern] * scale
    if not (h.scanning_sequence or h.sequence_variant or h.series_description or h.protocol_name):
        # Only TR/TE to go on: a phase image, a FLASH echo and a T1w can share them. Keep the physics
        # label but let a human confirm it.
        conf *= 0.8
        why += " (thin header: no sequence type and no description)"
    conf = round(min(max(conf, 0.0), 1.0), 3)
    review = pattern in ("disagree", "contradicted_keyword", "nothing") or conf < REVIEW_BELOW
    return Classification(
        label=label,
        contrast_enhanced=_contrast_enhanced(h),
        confidence=conf,
        explanation=f"{label} because {why}",
        needs_review=review,
    )


def _physics_scale(phys: _Evidence) -> float:
    """Confidence factor of physics evidence: 1 for the strongest rules, less for weaker ones."""
    return min(1.0, 0.55 + 0.5 * phys.strength)


def _decide(h: SeriesHeader) -> tuple[str, str, str, float]:
    """(label, evidence pattern, reasons, confidence scale) from the header's physics and keywords."""
    phys, kw = _physics(h), _keywords(h)
    prepared_t1 = phys.label == "T1w" and phys.strength >= 0.9  # inversion/magnetization-prepared GRE
    if kw.family in _NEEDS_LONG_TE and prepared_t1 and (h.echo_time or 0) < 30:
        # The physics rules the keyword out (an MPRAGE acquired in a task session is still an MPRAGE).
        rest = _keywords(h, skip=_NEEDS_LONG_TE)
        ruled_out = f"{kw.reason} is ruled out by the physics"
        if rest.label == phys.label:
            return phys.label, "agree", f"{phys.reason}; {rest.reason}; {ruled_out}", 0.95
        if rest.label is None:
            return phys.label, "contradicted_keyword", f"{phys.reason}; {ruled_out}", 1.0
        kw = rest
    if kw.label == "other":
        if phys.label in STRUCTURAL:
            why = f"{kw.reason}, although physics alone suggests {phys.label} ({phys.reason})"
            return "other", "other_over_structural", why, 1.0
        why = kw.reason + (f"; {phys.reason}" if phys.reason else "")
        return "other", "other_agree" if phys.label == "other" else "other_keyword", why, 1.0
    if phys.label == "other":
        if kw.label in STRUCTURAL:
            return "other", "disagree", f"{phys.reason}; but {kw.reason} suggests {kw.label}", 1.0
        return "other", "physics", phys.reason, _physics_scale(phys)
    if phys.label in STRUCTURAL:
        if kw.label is None:
            return phys.label, "physics", phys.reason + (f"; {kw.reason}" if kw.reason else ""), _physics_scale(phys)
        if kw.label == phys.label:
            return phys.label, "agree", f"{phys.reason}; {kw.reason}", 1.0 if phys.strength >= 0.75 else 0.95
        label = phys.label if phys.strength >= kw.strength else kw.label
        why = f"physics says {phys.label} ({phys.reason}) but {kw.reason} says {kw.label}; chose {label}"
        return label, "disagree", why, 1.0
    if kw.label in STRUCTURAL:
        why = kw.reason + (f"; {phys.reason}" if phys.reason else "; no usable timing")
        return kw.label, "keyword", why, min(1.0, 0.5 + 0.5 * kw.strength)
    why = "no decisive physics or keywords" + (f": {phys.reason}" if phys.reason else "")
    return "other", "nothing", why + (f"; {kw.reason}" if kw.reason else ""), 1.0


def classify_dataset(ds: Any) -> Classification:
    """Classify one DICOM instance (a pydicom Dataset, classic or enhanced) of a series.

    The public entry point for a single header: it normalises the header exactly as the scan does
    (`imaging.dicom.header_from_dataset`) and applies `classify_series`, so a header classified here
    gets the label the curation flow would give its series.
    """
    return classify_series(header_from_dataset(ds))


# --------------------------------------------------------------------------------------------------
# `mrifoundry classify SOURCE`: one row per series of a folder


@dataclass(frozen=True)
class SeriesRow:
    """One line of `mrifoundry classify`. Holds the raw SeriesInstanceUID: printed for the operator
    who ran the command on their own export, never persisted (the manifest keys series by pseudonym).
    """

    series_instance_uid: str
    series_number: int | None
    series_description: str
    label: str
    contrast_enhanced: bool
    confidence: float
    needs_review: bool
    explanation: str
    rejection: str


ROW_FIELDS = tuple(SeriesRow.__dataclass_fields__)
FORMATS = ("csv", "json")


def classify_source(source: Path, *, workers: int | None = None) -> list[SeriesRow]:
    """Scan `source` and classify every series in it, with the same code the curation flow runs.

    A series that ingest rejects (localizer, derived, too few slices, ...) is listed as "other" with
    the rejection reason instead of a classification: the flow never classifies it either.
    """
    scan = scan_source(Path(source), workers=workers)
    rows = []
    for rec in scan.series:
        h = rec.header
        description = h.series_description or h.protocol_name
        if rec.rejection:
            # Ingest's rule decides. Most rules are facts (too few slices, a non-image SOP class);
            # "derived" is a judgement from ImageType and words: where the header's own physics and
            # keywords confidently say a structural class, the row says so and is not reported as certain.
            c = classify_series(h)
            doubt = rec.rejection == "derived" and c.label in STRUCTURAL and not c.needs_review
            why = f"other because ingest rejected the series: {rec.rejection} ({rec.rejection_detail})"
            rows.append(
                SeriesRow(
                    rec.series_uid,
                    h.series_number,
                    description,
                    "other",
                    False,
                    round(1.0 - c.confidence, 3) if doubt else 0.99,
                    doubt,
                    why + (f"; the header alone would say {c.explanation}" if doubt else ""),
                    rec.rejection,
                )
            )
            continue
        c = classify_series(h)
        rows.append(
            SeriesRow(
                rec.series_uid,
                h.series_number,
                description,
                c.label,
                c.contrast_enhanced,
                c.confidence,
                c.needs_review,
                c.explanation,
                "",
            )
        )
    return rows


def format_rows(rows: Sequence[SeriesRow], fmt: str) -> str:
    """Rows as CSV (header line + one line per series) or as a JSON list of objects."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    return out.getvalue()
