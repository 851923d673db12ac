"""Quality measures against real recordings, with VERSA-style metadata for picking suites.

Every measure here takes one (reference recording, synthesis) pair of waveforms at one sample
rate, plus the text where it needs it. Both sides are resampled to 16 kHz first and every
measure works there, except `mel_l1_dtw`, which uses the harness's own mel front end at the
given rate (at 22.05 kHz: the trainer's validation measure exactly). Settings, stated once so
reports can quote them:

- Analysis band 0-8 kHz (16 kHz sampling). The shared front end's mel spectrogram stops at
  8 kHz (fmax), so a system vocoded from it has an empty 8-11 kHz band. At 22.05 kHz that band
  dominates the cepstral distance: the recording's own mel through Griffin-Lim scored 16.5 dB
  MCD on LJ001-0001, worse than the recording plus white noise at 0 dB SNR (14.5 dB). At 16 kHz
  the same pair scores 4.1 dB against 13.3 dB. PESQ wide-band, STOI, the ASR and DNSMOS are
  16 kHz measures anyway, so all measures now see the same band.
- WORLD analysis (used by MCD, F0 and the time alignment): `pyworld.dio` + `stonemask` F0
  (floor 71 Hz, ceiling 800 Hz: WORLD's defaults, which cover the LJSpeech speaker), frame
  period 5 ms (WORLD's default, and the setting the spec's timing was taken with),
  `cheaptrick` spectral envelope (FFT size from pyworld's default for the rate).
- Mel-cepstra: `pysptk.sp2mc` of order 24 on the envelope; c0 (energy) is dropped, so 24
  coefficients c1..c24 enter the distance. Frequency warping alpha from `mcep_alpha`: 0.41 at
  16 kHz (pysptk's table); 0.466 if `world_features` is called at 22.05 kHz, as the spec fixes.
- DTW: `librosa.sequence.dtw`, Euclidean cost on c1..c24, steps (1,1), (0,1), (1,0) with
  equal weights. The path found for MCD is reused for F0, V/UV and the waveform alignment, so
  all intrusive measures agree on which synthetic frame answers which recorded frame.
- MCD (dB) = mean over DTW path pairs of 10/ln10 * sqrt(2 * sum_d (c_ref,d - c_syn,d)^2).
  Silence is not trimmed (neither does ESPnet), so noise in pauses counts. ESPnet's
  `evaluate_mcd.py` differs: native rate, per-frame `pysptk.mcep` of STFT frames (15x slower
  here) and `fastdtw`; its numbers are not interchangeable with these.
- log-F0 RMSE in cents (1200 * log2 ratio) over path pairs voiced in both; ESPnet's natural-log
  RMSE is this value / 1731.23. A few octave errors of the F0 tracker dominate an RMSE, so
  the gross pitch error (share of those pairs off by more than 20%) is reported beside it.
  V/UV error: share of path pairs whose voicing disagrees.
- PESQ (ITU-T P.862.2 wide-band, MOS-LQO 1.04-4.64) and STOI (0-1). Both are intrusive
  measures built for degraded copies of the same recording: a synthesis speaks with its own
  timing, so without alignment they would score timing, not quality. The synthesis is
  therefore put on the recording's time line first (`time_align`): the WORLD DTW path gives a
  time map, and WSOLA (waveform-similarity overlap-add: 20 ms Hann frames, 10 ms hop) reads
  the synthesis along that map, shifting each frame by up to +-2.5 ms to continue the previous
  one in phase. WSOLA keeps pitch and timbre where resampling along the map would shift them;
  an identity map returns the input sample for sample. The +-2.5 ms search was chosen on
  recordings re-timed by +-20-25% and aligned back: it recovered STOI 0.97-0.99 and PESQ
  3.3-3.8, where no search gave PESQ 1.7-2.4 (phase clashes) and +-10 ms drifted off the map
  (STOI 0.88-0.93). What remains measures spectral and phase quality at matched timing;
  timing itself is left to the DTW measures and the alignment measures.
- WER / CER: offline Whisper tiny.en with Whisper's English normaliser on both sides (see
  `ttsbench.metrics.asr`). Each utterance keeps its hypothesis and its hit / substitution /
  deletion / insertion counts (`wer/hits` ...); a set's WER is the corpus rate, summed errors
  over summed reference words (`summarise`), with a bootstrap interval over utterances.
- speaker_sim: cosine between the synthesis's speaker embedding (Resemblyzer's GE2E encoder)
  and the mean embedding of the corpus speaker's recordings, without the recording of the same
  utterance (see `ttsbench.metrics.speaker`).
- mos: DistillMOS (Stahl & Gamper, ICASSP 2025), a no-reference MOS predictor distilled from
  an XLS-R-based speech quality model (see `ttsbench.metrics.mos`): the SSL-family naturalness
  estimate TTS toolkits report (ESPnet, VERSA and NeMo use UTMOS-family predictors).
- DNSMOS P.835 (SIG, BAK, OVRL) and P.808: no-reference MOS predictors from Microsoft's Deep
  Noise Suppression challenge, via speechmos' bundled ONNX weights (clips under 9.01 s are
  tiled to that length, as DNSMOS does). Trained on noise-suppressed speech, not TTS: use them
  to rank systems, not as listener MOS; a second opinion beside `mos`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import librosa
import numpy as np

from ttsbench.audio import AudioConfig, mel_spectrogram
from ttsbench.metrics.mos import distillmos
from ttsbench.metrics.asr import ErrorCounts, char_errors, normalise_text, transcribe, word_errors
from ttsbench.metrics.speaker import SpeakerReference
from ttsbench.metrics.stats import Interval, mean_interval, rate_interval

with warnings.catch_warnings():  # pyworld and pysptk import pkg_resources, which warns on import
    warnings.simplefilter("ignore", UserWarning)
    import pysptk
    import pyworld

WORLD_FRAME_PERIOD_MS = 5.0
F0_FLOOR_HZ = 71.0
F0_CEIL_HZ = 800.0
MCEP_ORDER = 24
EVAL_RATE = 16000  # every measure works at 16 kHz (see the module docstring)
WSOLA_HOP_SECONDS = 0.010  # frames are twice as long: 20 ms
WSOLA_TOLERANCE_SECONDS = 0.0025
CENTS_PER_NEPER = 1200.0 / math.log(2.0)
MIN_SECONDS = 0.05
MAX_SCORED_SECONDS = 60  # DTW over 5 ms frames: a cost matrix of (12,000 frames)^2 floats is ~1.1 GiB
GROSS_PITCH_ERROR = 0.2  # relative F0 error beyond which a frame counts as a gross (e.g. octave) error


def mel_l1_dtw(reference: np.ndarray, synthesis: np.ndarray) -> float:
    """Mean absolute log-mel difference along the DTW path ([frames, n_mels] inputs).

    DTW first, because a free-running system's timing differs from the recording's and a
    frame-by-frame distance would mostly measure timing.
    """
    _, path = librosa.sequence.dtw(X=reference.T, Y=synthesis.T, metric="cityblock")
    diffs = np.abs(reference[path[:, 0]] - synthesis[path[:, 1]])
    return float(diffs.mean())


# --------------------------------------------------------------------------------------------
# Analysis shared by the measures


def mcep_alpha(sample_rate: int) -> float:
    """All-pass warping constant: the spec's 0.466 at 22.05 kHz, pysptk's table elsewhere."""
    return 0.466 if sample_rate == 22050 else float(pysptk.util.mcepalpha(sample_rate))


@dataclass(frozen=True)
class WorldFeatures:
    """WORLD analysis at a 5 ms frame period: F0 in Hz (0 = unvoiced), mel-cepstra c1..c24."""

    f0: np.ndarray
    mcep: np.ndarray


def world_features(audio: np.ndarray, sample_rate: int) -> WorldFeatures:
    """dio + stonemask F0, cheaptrick envelope, sp2mc order 24 with c0 dropped."""
    x = np.ascontiguousarray(audio, dtype=np.float64)
    f0, times = pyworld.dio(
        x, sample_rate, f0_floor=F0_FLOOR_HZ, f0_ceil=F0_CEIL_HZ, frame_period=WORLD_FRAME_PERIOD_MS
    )
    f0 = pyworld.stonemask(x, f0, times, sample_rate)
    envelope = pyworld.cheaptrick(x, f0, times, sample_rate, f0_floor=F0_FLOOR_HZ)
    mcep = pysptk.sp2mc(envelope, order=MCEP_ORDER, alpha=mcep_alpha(sample_rate))
    return WorldFeatures(f0=f0, mcep=np.ascontiguousarray(mcep[:, 1:]))


def dtw_path(reference: np.ndarray, synthesis: np.ndarray) -> np.ndarray:
    """DTW path [pairs, 2] (reference frame, synthesis frame), in time order; Euclidean cost."""
    _, path = librosa.sequence.dtw(X=reference.T, Y=synthesis.T, metric="euclidean")
    return np.ascontiguousarray(path[::-1])


def time_map(path: np.ndarray, frame_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(reference times, synthesis times) in seconds: each reference frame's mean partner."""
    counts = np.bincount(path[:, 0])
    partner = np.bincount(path[:, 0], weights=path[:, 1]) / np.maximum(counts, 1)
    frames = np.arange(len(counts))
    return frames * frame_seconds, partner * frame_seconds


def wsola(synthesis: np.ndarray, source_centres: np.ndarray, hop: int, frame: int, tolerance: int) -> np.ndarray:
    """Read `synthesis` along a time map by waveform-similarity overlap-add.

    Output frame k is centred at sample k*hop and copies a Hann-windowed frame of the synthesis
    centred near `source_centres[k]`, shifted by up to `tolerance` samples to best continue the
    previously copied frame (normalised cross-correlation), so pitch periods line up.
    Requires frame == 2 * hop: periodic Hann windows at half overlap sum to one.
    """
    window = np.hanning(frame + 1)[:-1]  # periodic Hann (scipy's get_window("hann")), without importing scipy.signal
    pad = frame + tolerance + hop
    padded = np.concatenate([np.zeros(pad), np.asarray(synthesis, dtype=np.float64), np.zeros(pad)])
    last_start = len(padded) - frame - tolerance
    out = np.zeros(len(source_centres) * hop + frame)
    previous_start: int | None = None
    for k, centre in enumerate(source_centres):
        start = int(np.clip(round(centre) - frame // 2 + pad, tolerance, last_start))
        if previous_start is not None:
            start += _best_shift(padded, start, padded[previous_start + hop : previous_start + hop + frame], tolerance)
        out[k * hop : k * hop + frame] += window * padded[start : start + frame]
        previous_start = start
    return out[frame // 2 :]


def _best_shift(signal: np.ndarray, start: int, natural: np.ndarray, tolerance: int) -> int:
    """Shift in [-tolerance, tolerance] whose frame best matches `natural`; 0 on ties and in silence.

    The score <natural, candidate> / |candidate| peaks at the candidate equal to `natural`
    (Cauchy-Schwarz), so a synthesis read along the identity map comes back unchanged.
    """
    if float(np.dot(natural, natural)) < 1e-12:
        return 0
    region = signal[start - tolerance : start + tolerance + len(natural)]
    correlation = np.correlate(region, natural, mode="valid")
    energy = np.convolve(region**2, np.ones(len(natural)), mode="valid")
    scores = correlation / np.sqrt(np.maximum(energy, 1e-12))
    best = int(np.argmax(scores))
    if scores[tolerance] >= scores[best] - 1e-9 * abs(scores[best]):
        return 0
    return best - tolerance


def time_align(
    reference: np.ndarray, synthesis: np.ndarray, sample_rate: int, path: np.ndarray | None = None
) -> np.ndarray:
    """The synthesis moved onto the reference's time line (same length), for PESQ and STOI.

    `path` is a DTW path between WORLD frames (5 ms) of the two; computed when not given.
    """
    if path is None:
        path = dtw_path(world_features(reference, sample_rate).mcep, world_features(synthesis, sample_rate).mcep)
    hop = round(WSOLA_HOP_SECONDS * sample_rate)
    tolerance = round(WSOLA_TOLERANCE_SECONDS * sample_rate)
    reference_times, synthesis_times = time_map(path, WORLD_FRAME_PERIOD_MS / 1000.0)
    centres = np.arange(len(reference) // hop + 2) * hop
    times = centres / sample_rate
    source = np.interp(times, reference_times, synthesis_times)
    # past the last analysis frame, keep the last offset rather than freezing the source
    beyond = times > reference_times[-1]
    source[beyond] = synthesis_times[-1] + times[beyond] - reference_times[-1]
    source *= sample_rate
    aligned = wsola(synthesis, source, hop, 2 * hop, tolerance)
    return aligned[: len(reference)].astype(np.float32)


def to_eval_rate(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 audio at 16 kHz, the rate every measure here works at."""
    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate == EVAL_RATE:
        return audio
    return librosa.resample(audio, orig_sr=sample_rate, target_sr=EVAL_RATE)


# --------------------------------------------------------------------------------------------
# The MOS predictor (one instance per process, loaded on first use)


@functools.lru_cache(maxsize=1)
def _dnsmos():
    """speechmos' DNSMOS on its bundled ONNX weights, with single-threaded sessions.

    onnxruntime's default pool takes every core and spin-waits, which on a shared machine
    slows the other jobs and itself; one thread was faster here (4.0 s against 6.6 s for a
    1.9 s clip on a busy 2-core machine, where DNSMOS tiles short clips into six windows).
    """
    from pathlib import Path

    import onnxruntime
    from speechmos import dnsmos

    class SingleThreadDNSMOS(dnsmos.DNSMOS):
        def __init__(self, primary_model_path: str, p808_model_path: str) -> None:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            providers = ["CPUExecutionProvider"]
            self.primary_model_path = primary_model_path
            self.onnx_sess = onnxruntime.InferenceSession(primary_model_path, options, providers=providers)
            self.p808_onnx_sess = onnxruntime.InferenceSession(p808_model_path, options, providers=providers)

    models = Path(dnsmos.__file__).parent / "dnsmos_models"
    return SingleThreadDNSMOS(str(models / "sig_bak_ovr.onnx"), str(models / "model_v8.onnx"))


# --------------------------------------------------------------------------------------------
# A pair, with its analyses computed once and shared by every measure


class Pair:
    """One (reference, synthesis) pair; analyses are computed lazily, once, and shared."""

    def __init__(self, reference: np.ndarray | None, synthesis: np.ndarray, sample_rate: int, text: str | None = None,
                 speaker: SpeakerReference | None = None, utterance: str | None = None):
        self.synthesis = _checked("synthesis", synthesis, sample_rate)
        self.reference = None if reference is None else _checked("reference", reference, sample_rate)
        self.sample_rate = sample_rate
        self.text = text
        self.speaker = speaker
        self.utterance = utterance  # id, so the speaker centroid leaves this utterance's recording out

    def need_reference(self) -> np.ndarray:
        if self.reference is None:
            raise ValueError("this measure needs the reference recording")
        return self.reference

    def need_text(self) -> str:
        if not self.text or not normalise_text(self.text):
            raise ValueError("this measure needs the text (with at least one word)")
        return self.text

    @functools.cached_property
    def reference_world(self) -> WorldFeatures:
        return world_features(self.reference_16k, EVAL_RATE)

    @functools.cached_property
    def synthesis_world(self) -> WorldFeatures:
        return world_features(self.synthesis_16k, EVAL_RATE)

    @functools.cached_property
    def path(self) -> np.ndarray:
        return dtw_path(self.reference_world.mcep, self.synthesis_world.mcep)

    @functools.cached_property
    def reference_16k(self) -> np.ndarray:
        return to_eval_rate(self.need_reference(), self.sample_rate)

    @functools.cached_property
    def synthesis_16k(self) -> np.ndarray:
        return to_eval_rate(self.synthesis, self.sample_rate)

    @functools.cached_property
    def aligned_synthesis_16k(self) -> np.ndarray:
        return time_align(self.reference_16k, self.synthesis_16k, EVAL_RATE, self.path)

    @functools.cached_property
    def transcript(self) -> str:
        return transcribe(self.synthesis_16k, EVAL_RATE)

    @property
    def transcribed(self) -> bool:
        return "transcript" in self.__dict__

    def need_speaker(self) -> SpeakerReference:
        if self.speaker is None:
            raise ValueError("this measure needs the speaker's reference recordings")
        return self.speaker

    @functools.cached_property
    def mos(self) -> float:
        return distillmos(self.synthesis_16k, EVAL_RATE)

    @functools.cached_property
    def dnsmos(self) -> dict[str, float]:
        scores = _dnsmos()(np.clip(self.synthesis_16k, -1.0, 1.0), EVAL_RATE, False)
        return {k: float(v) for k, v in scores.items() if k.endswith("_mos")}


def _checked(name: str, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"{name} audio must be mono (1-D), got shape {audio.shape}")
    if len(audio) < MIN_SECONDS * sample_rate:
        raise ValueError(f"{name} audio is {len(audio) / sample_rate:.3f} s long; at least {MIN_SECONDS} s is needed")
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"{name} audio holds NaN or inf samples")
    return audio


# --------------------------------------------------------------------------------------------
# The measures


def _mcd(pair: Pair) -> float:
    diff = pair.reference_world.mcep[pair.path[:, 0]] - pair.synthesis_world.mcep[pair.path[:, 1]]
    return float(np.mean(10.0 / np.log(10.0) * np.sqrt(2.0 * np.sum(diff**2, axis=1))))


def _f0_pairs(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    return pair.reference_world.f0[pair.path[:, 0]], pair.synthesis_world.f0[pair.path[:, 1]]


def _f0_rmse_cents(pair: Pair) -> float:
    reference, synthesis = _f0_pairs(pair)
    voiced = (reference > 0) & (synthesis > 0)
    if not voiced.any():
        return float("nan")
    cents = CENTS_PER_NEPER * np.log(synthesis[voiced] / reference[voiced])
    return float(np.sqrt(np.mean(cents**2)))


def _gross_pitch_error(pair: Pair) -> float:
    reference, synthesis = _f0_pairs(pair)
    voiced = (reference > 0) & (synthesis > 0)
    if not voiced.any():
        return float("nan")
    return float(np.mean(np.abs(synthesis[voiced] / reference[voiced] - 1.0) > GROSS_PITCH_ERROR))


def _vuv_error(pair: Pair) -> float:
    reference, synthesis = _f0_pairs(pair)
    return float(np.mean((reference > 0) != (synthesis > 0)))


def _mel_l1(pair: Pair) -> float:
    config = AudioConfig(sample_rate=pair.sample_rate, fmax=min(8000.0, pair.sample_rate / 2))
    return mel_l1_dtw(mel_spectrogram(pair.need_reference(), config), mel_spectrogram(pair.synthesis, config))


def _pesq(pair: Pair) -> float:
    from pesq import PesqError, pesq

    degraded = pair.aligned_synthesis_16k
    if not np.any(np.abs(degraded) > 1e-8):  # pesq 0.0.4 crashes (NaN to int) on digital silence
        return float("nan")
    try:
        return float(pesq(EVAL_RATE, pair.reference_16k, degraded, "wb"))
    except PesqError:  # no speech detected in one side, or too short: PESQ has no answer
        return float("nan")


def _stoi(pair: Pair) -> float:
    from pystoi import stoi

    with warnings.catch_warnings():  # pystoi warns (and returns ~0) when under 30 speech frames
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stoi(pair.reference_16k, pair.aligned_synthesis_16k, EVAL_RATE, extended=False))


def _speaker_sim(pair: Pair) -> float:
    return pair.need_speaker().similarity(pair.synthesis_16k, EVAL_RATE, pair.utterance)


def _dnsmos_score(key: str) -> Callable[[Pair], float]:
    return lambda pair: pair.dnsmos[key]


COUNT_PARTS = ("hits", "substitutions", "deletions", "insertions")


@dataclass(frozen=True)
class MetricInfo:
    """What a measure needs and how to read it (as in VERSA's metric metadata).

    slow: too costly for every validation point of a training curve; meant for final scoring.
    Measured alone on a 9.66 s clip (busy 2-core CPU, seconds per audio second): mel_l1_dtw
    0.02; the WORLD + DTW measures 0.17-0.20 (they share that analysis: 0.18 for all four);
    PESQ and STOI 0.20-0.23 alone, about 0.03 each on top of that shared analysis, so not
    slow; WER/CER about 0.1 (Whisper tiny.en, int8, 2 cores; shared transcript); speaker_sim
    about 0.01 once the encoder is loaded; DNSMOS 0.07, but it tiles a clip under 9.01 s to
    past that length and scores every 9 s window, so a 1.9 s clip costs six windows (about 2 s
    per audio second).
    counts: for an error rate, the per-utterance error counts it is made of; a set's value is
    then the corpus rate (summed errors / summed reference length), never a mean of rates.
    source: the paper and the implementation the number comes from.
    """

    name: str
    unit: str
    higher_is_better: bool
    needs_reference_audio: bool
    needs_text: bool
    slow: bool
    compute: Callable[[Pair], float]
    description: str
    counts: Callable[[str, str], ErrorCounts] | None = None  # (text, transcript) -> counts
    needs_speaker: bool = False  # the speaker's reference recordings (a SpeakerReference)
    source: str = ""


def _metric(name: str, unit: str, compute: Callable[[Pair], float], description: str, *, higher_is_better: bool,
            needs_reference_audio: bool, needs_text: bool = False, slow: bool = False,
            counts: Callable[[str, str], ErrorCounts] | None = None, needs_speaker: bool = False,
            source: str = "") -> MetricInfo:
    return MetricInfo(name=name, unit=unit, higher_is_better=higher_is_better,
                      needs_reference_audio=needs_reference_audio, needs_text=needs_text, slow=slow,
                      compute=compute, description=description, counts=counts, needs_speaker=needs_speaker,
                      source=source)


METRICS: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        _metric("mcd", "dB", _mcd, "mel-cepstral distortion c1..c24, WORLD envelope, alpha per rate, after DTW",
                higher_is_better=False, needs_reference_audio=True),
        _metric("f0_rmse", "cents", _f0_rmse_cents, "log-F0 RMSE over DTW pairs voiced in both (cents = 1200 log2 ratio)",
                higher_is_better=False, needs_reference_audio=True),
        _metric("f0_gpe", "fraction", _gross_pitch_error,
                "gross pitch error: share of pairs voiced in both with F0 off by more than 20%",
                higher_is_better=False, needs_reference_audio=True),
        _metric("vuv_error", "fraction", _vuv_error, "share of DTW pairs whose voicing decisions disagree",
                higher_is_better=False, needs_reference_audio=True),
        _metric("mel_l1_dtw", "nats", _mel_l1,
                "mean |ln-mel difference| after DTW, harness mel front end (the trainer's measure)",
                higher_is_better=False, needs_reference_audio=True),
        _metric("pesq", "MOS-LQO", _pesq, "PESQ P.862.2 wide-band at 16 kHz on the time-aligned synthesis",
                higher_is_better=True, needs_reference_audio=True),
        _metric("stoi", "0-1", _stoi, "STOI at 16 kHz on the time-aligned synthesis",
                higher_is_better=True, needs_reference_audio=True),
        _metric("wer", "fraction", lambda pair: word_errors(pair.need_text(), pair.transcript).rate,
                "word error rate of Whisper tiny.en's transcript, Whisper-normalised (corpus rate over a set)",
                higher_is_better=False, needs_reference_audio=False, needs_text=True, slow=True,
                counts=word_errors),
        _metric("cer", "fraction", lambda pair: char_errors(pair.need_text(), pair.transcript).rate,
                "character error rate of Whisper tiny.en's transcript, Whisper-normalised (corpus rate over a set)",
                higher_is_better=False, needs_reference_audio=False, needs_text=True, slow=True,
                counts=char_errors),
        _metric("speaker_sim", "cosine", _speaker_sim,
                "cosine of Resemblyzer speaker embeddings: synthesis vs. the mean of the speaker's recordings",
                higher_is_better=True, needs_reference_audio=True, slow=True, needs_speaker=True),
        _metric("mos", "MOS", lambda pair: pair.mos,
                "DistillMOS: naturalness MOS predicted from the audio alone (SSL-distilled, no reference)",
                higher_is_better=True, needs_reference_audio=False, slow=True,
                source="Stahl & Gamper, ICASSP 2025; distillmos 0.9.1 weights (Microsoft, MIT), ttsbench.metrics.mos"),
        _metric("dnsmos_ovrl", "MOS", _dnsmos_score("ovrl_mos"), "DNSMOS P.835 overall quality (no reference)",
                higher_is_better=True, needs_reference_audio=False, slow=True),
        _metric("dnsmos_sig", "MOS", _dnsmos_score("sig_mos"), "DNSMOS P.835 speech signal quality (no reference)",
                higher_is_better=True, needs_reference_audio=False, slow=True),
        _metric("dnsmos_bak", "MOS", _dnsmos_score("bak_mos"), "DNSMOS P.835 background quality (no reference)",
                higher_is_better=True, needs_reference_audio=False, slow=True),
        _metric("dnsmos_p808", "MOS", _dnsmos_score("p808_mos"), "DNSMOS P.808 overall quality (no reference)",
                higher_is_better=True, needs_reference_audio=False, slow=True),
    )
}


def count_keys(name: str) -> tuple[str, ...]:
    """Score keys holding an error rate's per-utterance counts: 'wer/hits', 'wer/substitutions', ..."""
    return tuple(f"{name}/{part}" for part in COUNT_PARTS)


def select_metrics(include_slow: bool = True, have_reference: bool = True, have_text: bool = True,
                   have_speaker: bool = False) -> list[str]:
    """Names of the measures that fit: fast ones for validation curves, all for final scores."""
    return [
        name
        for name, info in METRICS.items()
        if (include_slow or not info.slow)
        and (have_reference or not info.needs_reference_audio)
        and (have_text or not info.needs_text)
        and (have_speaker or not info.needs_speaker)
    ]


def resolve_metrics(metrics: Iterable[str] | None, have_reference: bool, have_text: bool,
                    have_speaker: bool = True) -> list[str]:
    """Check requested names (None: every measure the inputs allow); errors name what is missing."""
    if metrics is None:
        return select_metrics(True, have_reference, have_text, have_speaker)
    names = list(metrics)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise KeyError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    if not have_text and (needing := [n for n in names if METRICS[n].needs_text]):
        raise ValueError(f"{', '.join(needing)} need(s) the text")
    if not have_reference and (needing := [n for n in names if METRICS[n].needs_reference_audio]):
        raise ValueError(f"{', '.join(needing)} need(s) the reference recording")
    if not have_speaker and (needing := [n for n in names if METRICS[n].needs_speaker]):
        raise ValueError(f"{', '.join(needing)} need(s) the speaker's reference recordings")
    return names


@dataclass(frozen=True)
class Scores:
    """One utterance's scores (measures and, for error rates, their counts) and the ASR transcript."""

    values: dict[str, float]
    transcript: str | None


def score(
    reference_audio: np.ndarray | None,
    synthesis_audio: np.ndarray,
    sample_rate: int,
    text: str | None = None,
    metrics: Iterable[str] | None = None,
    speaker: SpeakerReference | None = None,
    utterance: str | None = None,
) -> Scores:
    """Score one synthesis against its recording (and text, and speaker); NaN where a measure has no answer.

    metrics: names from `METRICS`; None means every measure the given inputs allow. Shared
    analyses (WORLD features, the DTW path, the alignment, the transcript) are computed once.
    An error rate adds its counts under `count_keys(name)`.
    """
    names = resolve_metrics(metrics, reference_audio is not None, bool(text), speaker is not None)
    pair = Pair(reference_audio, synthesis_audio, sample_rate, text, speaker, utterance)
    values: dict[str, float] = {}
    for name in names:
        info = METRICS[name]
        values[name] = float(info.compute(pair))
        if info.counts is not None:
            values.update(_count_values(name, info.counts(pair.need_text(), pair.transcript)))
    return Scores(values, pair.transcript if pair.transcribed else None)


def _count_values(name: str, counts: ErrorCounts) -> dict[str, float]:
    return {key: float(getattr(counts, part)) for key, part in zip(count_keys(name), COUNT_PARTS)}


def unheard(text: str | None, metrics: Iterable[str]) -> Scores:
    """Scores of a synthesis too short to analyse: nothing heard, so an error rate deletes every
    word (not NaN, which would leave the worst outputs out of a corpus rate); other measures NaN."""
    metrics = list(metrics)
    values: dict[str, float] = {}
    for name in metrics:
        info = METRICS[name]
        if info.counts is None or not text:
            values[name] = float("nan")
            continue
        counts = info.counts(text, "")
        values[name] = counts.rate
        values.update(_count_values(name, counts))
    return Scores(values, "" if any(METRICS[n].counts for n in metrics) else None)


def rate_counts(rows: Iterable[Mapping[str, float]], name: str) -> tuple[list[float], list[float]]:
    """(errors, reference lengths) per utterance of an error rate, from rows holding its counts."""
    hits, subs, dels, ins = count_keys(name)
    errors, lengths = [], []
    for row in rows:
        if all(key in row and not math.isnan(row[key]) for key in (hits, subs, dels, ins)):
            errors.append(row[subs] + row[dels] + row[ins])
            lengths.append(row[hits] + row[subs] + row[dels])
    return errors, lengths


def summarise(rows: Iterable[Mapping[str, float]]) -> dict[str, Interval]:
    """Per measure over utterances: the corpus rate for error rates, else the mean; each with its
    95 % bootstrap interval. NaNs are left out; count keys are folded into their rate."""
    rows = list(rows)
    names = [n for n in dict.fromkeys(k for row in rows for k in row) if n in METRICS]
    out = {}
    for name in names:
        if METRICS[name].counts is not None:
            out[name] = rate_interval(*rate_counts(rows, name))
        else:
            out[name] = mean_interval([row[name] for row in rows if name in row])
    return out
