//! WAV source/sink and Ogg Opus writer, checked against hound, the ogg reader and opus-tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use viska_media::audio::{AudioIoError, AudioSink, AudioSource, SourceStatus};
use viska_media::codec::OpusConfig;
use viska_media::ogg::{OggOpusWriter, VENDOR};
use viska_media::wav::{WavSink, WavSource};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("viska-media-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn sine(rate: u32, freq: f64, seconds: f64) -> impl Iterator<Item = f64> {
    let n = (f64::from(rate) * seconds) as usize;
    (0..n).map(move |i| (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin())
}

fn read_all(source: &mut WavSource, frame: usize) -> Vec<i16> {
    let mut out = Vec::new();
    let mut buf = vec![0i16; frame];
    loop {
        match source.read_frame(&mut buf).expect("read") {
            SourceStatus::Ended => return out,
            _ => out.extend_from_slice(&buf),
        }
    }
}

/// Zero crossings per second: a frequency estimate that survives resampling.
fn crossings_per_second(pcm: &[i16]) -> f64 {
    let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / (pcm.len() as f64 / 48_000.0)
}

fn rms(pcm: &[i16]) -> f64 {
    (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
}

#[test]
fn wav_source_converts_44k1_stereo_to_48k_mono() {
    let dir = temp_dir("wav44");
    let path = dir.join("stereo.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&path, spec).expect("create");
    // Left carries a 1 kHz tone, right carries silence: the mono mix is the tone at half level.
    for s in sine(44_100, 1_000.0, 2.0) {
        writer.write_sample((s * 16_000.0) as i16).expect("write");
        writer.write_sample(0i16).expect("write");
    }
    writer.finalize().expect("finalize");

    let mut source = WavSource::open(&path).expect("open");
    let pcm = read_all(&mut source, 960);
    // 2 s at 48 kHz, padded up to whole frames.
    assert!(
        (96_000..96_000 + 960).contains(&pcm.len()),
        "len {}",
        pcm.len()
    );
    let middle = &pcm[4_800..90_000];
    let rate = crossings_per_second(middle);
    assert!((1_990.0..2_010.0).contains(&rate), "crossings/s {rate}");
    // Half of 16000 peak is 8000, RMS of a sine at peak 8000 is 5657.
    let level = rms(middle);
    assert!((5_500.0..5_800.0).contains(&level), "rms {level}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wav_source_reads_float_and_24_bit_files() {
    let dir = temp_dir("wavfmt");
    for (bits, format) in [
        (32, hound::SampleFormat::Float),
        (24, hound::SampleFormat::Int),
    ] {
        let path = dir.join(format!("{bits}.wav"));
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: bits,
            sample_format: format,
        };
        let mut writer = hound::WavWriter::create(&path, spec).expect("create");
        for s in sine(16_000, 500.0, 1.0) {
            match format {
                hound::SampleFormat::Float => writer.write_sample((s * 0.25) as f32),
                hound::SampleFormat::Int => writer.write_sample((s * 0.25 * 8_388_607.0) as i32),
            }
            .expect("write");
        }
        writer.finalize().expect("finalize");
        let pcm = read_all(&mut WavSource::open(&path).expect("open"), 480);
        assert!(
            (48_000..48_480).contains(&pcm.len()),
            "{bits}: len {}",
            pcm.len()
        );
        let middle = &pcm[2_400..45_000];
        let rate = crossings_per_second(middle);
        assert!(
            (990.0..1_010.0).contains(&rate),
            "{bits}: crossings/s {rate}"
        );
        // Peak 0.25 full scale = 8192; RMS 5793.
        let level = rms(middle);
        assert!((5_600.0..6_000.0).contains(&level), "{bits}: rms {level}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wav_source_pads_the_last_frame_and_loops_when_asked() {
    let samples: Vec<i16> = (1..=1_000).collect();
    let mut once = WavSource::from_samples(samples.clone());
    let mut frame = vec![0i16; 960];
    assert_eq!(
        once.read_frame(&mut frame).expect("read"),
        SourceStatus::Audio
    );
    assert_eq!(&frame[..], &samples[..960]);
    assert_eq!(
        once.read_frame(&mut frame).expect("read"),
        SourceStatus::Audio
    );
    assert_eq!(&frame[..40], &samples[960..]);
    assert!(frame[40..].iter().all(|&s| s == 0));
    assert_eq!(
        once.read_frame(&mut frame).expect("read"),
        SourceStatus::Ended
    );
    assert!(frame.iter().all(|&s| s == 0));

    let mut looping = WavSource::from_samples(samples.clone()).looping(true);
    looping.read_frame(&mut frame).expect("read");
    assert_eq!(
        looping.read_frame(&mut frame).expect("read"),
        SourceStatus::Audio
    );
    assert_eq!(&frame[..40], &samples[960..]);
    assert_eq!(&frame[40..], &samples[..920]);
    for _ in 0..10 {
        assert_eq!(
            looping.read_frame(&mut frame).expect("read"),
            SourceStatus::Audio
        );
    }
}

#[test]
fn wav_errors_are_typed() {
    let dir = temp_dir("wavbad");
    assert!(matches!(
        WavSource::open(dir.join("missing.wav")),
        Err(AudioIoError::File(_))
    ));
    let garbage = dir.join("garbage.wav");
    std::fs::write(&garbage, b"RIFF\x10\x00\x00\x00WAVEnot a real header").expect("write");
    assert!(matches!(
        WavSource::open(&garbage),
        Err(AudioIoError::File(_))
    ));
    let mut sink = WavSink::create(dir.join("done.wav")).expect("sink");
    sink.finish().expect("finish");
    assert!(matches!(
        sink.write_frame(&[0; 960]),
        Err(AudioIoError::File(_))
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wav_sink_writes_48k_mono_16_bit() {
    let dir = temp_dir("wavsink");
    let path = dir.join("out.wav");
    let mut sink = WavSink::create(&path).expect("sink");
    let frames: Vec<Vec<i16>> = (0..50)
        .map(|f| {
            (0..960)
                .map(|i| ((f * 960 + i) % 65_536) as u16 as i16)
                .collect()
        })
        .collect();
    for frame in &frames {
        sink.write_frame(frame).expect("write");
    }
    sink.finish().expect("finish");
    let mut reader = hound::WavReader::open(&path).expect("open");
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (1, 48_000, 16)
    );
    let back: Vec<i16> = reader
        .samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect();
    assert_eq!(back, frames.concat());
    let _ = std::fs::remove_dir_all(dir);
}

/// A voiced, speech-like signal (harmonics on a gliding pitch, syllable envelope).
fn voiced(seconds: f64) -> Vec<i16> {
    let mut phase = 0.0f64;
    (0..(48_000.0 * seconds) as usize)
        .map(|i| {
            let t = i as f64 / 48_000.0;
            let f0 = 165.0 + 55.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
            phase += 2.0 * std::f64::consts::PI * f0 / 48_000.0;
            let envelope = 0.55 + 0.45 * (2.0 * std::f64::consts::PI * 4.0 * t).sin();
            let voice: f64 = (1..=20).map(|k| (phase * k as f64).sin() / k as f64).sum();
            (voice * envelope * 6_000.0) as i16
        })
        .collect()
}

fn write_ogg(path: &Path, pcm: &[i16]) -> u64 {
    let mut writer = OggOpusWriter::create(path, &OpusConfig::default()).expect("create");
    for frame in pcm.chunks_exact(960) {
        writer.write(frame).expect("write");
    }
    writer.finish().expect("finish");
    writer.pre_skip()
}

#[test]
fn ogg_stream_follows_rfc_7845() {
    let dir = temp_dir("oggfmt");
    let path = dir.join("speech.opus");
    let pcm = voiced(3.0);
    let pre_skip = write_ogg(&path, &pcm);
    assert_eq!(pre_skip, 312);

    let mut reader = ogg::PacketReader::new(std::fs::File::open(&path).expect("open"));
    let head = reader.read_packet_expected().expect("head");
    assert!(head.first_in_stream() && head.last_in_page());
    assert_eq!(&head.data[..8], b"OpusHead");
    assert_eq!(head.data[8], 1, "version");
    assert_eq!(head.data[9], 1, "channels");
    assert_eq!(u16::from_le_bytes([head.data[10], head.data[11]]), 312);
    assert_eq!(
        u32::from_le_bytes(head.data[12..16].try_into().expect("rate")),
        48_000
    );
    assert_eq!(head.absgp_page(), 0);
    let tags = reader.read_packet_expected().expect("tags");
    assert_eq!(&tags.data[..8], b"OpusTags");
    assert_eq!(&tags.data[12..12 + VENDOR.len()], VENDOR.as_bytes());
    assert!(tags.last_in_page());

    let mut audio_packets = 0;
    let mut last = None;
    let mut page_granules = Vec::new();
    while let Some(packet) = reader.read_packet().expect("packet") {
        assert_eq!(packet.stream_serial(), head.stream_serial());
        audio_packets += 1;
        if packet.last_in_page() {
            page_granules.push(packet.absgp_page());
        }
        last = Some(packet);
    }
    // A page closes every 50 packets (one second), each granule the end of its last packet.
    assert_eq!(
        page_granules,
        vec![50 * 960, 100 * 960, 150 * 960, 312 + pcm.len() as u64]
    );
    let last = last.expect("audio packets");
    assert!(last.last_in_stream(), "EOS flag on the last page");
    // Final granule = pre-skip + real samples, trimming the flush padding.
    assert_eq!(last.absgp_page(), 312 + pcm.len() as u64);
    // 150 frames of audio plus one frame flushing the encoder's lookahead.
    assert_eq!(audio_packets, 151);
    let _ = std::fs::remove_dir_all(dir);
}

fn tool(name: &str) -> bool {
    Command::new(name).arg("-V").output().is_ok()
}

#[test]
fn ogg_file_plays_in_opus_tools() {
    // The test set-up (scripts/setup-deps) installs opus-tools: a missing tool is a failure,
    // not a skipped check.
    assert!(
        tool("opusinfo") && tool("opusdec"),
        "opus-tools not installed: run scripts/setup-deps test (apt install opus-tools)"
    );
    let dir = temp_dir("oggtools");
    let path = dir.join("speech.opus");
    let pcm = voiced(3.0);
    write_ogg(&path, &pcm);

    let info = Command::new("opusinfo")
        .arg(&path)
        .output()
        .expect("opusinfo");
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "opusinfo failed: {text}");
    assert!(text.contains("Playback length: 0m:03.000s"), "{text}");
    assert!(!text.to_lowercase().contains("warning"), "{text}");

    let decoded = dir.join("decoded.wav");
    let status = Command::new("opusdec")
        .args(["--quiet", "--rate", "48000"])
        .arg(&path)
        .arg(&decoded)
        .status()
        .expect("opusdec");
    assert!(status.success());
    let mut reader = hound::WavReader::open(&decoded).expect("decoded wav");
    assert_eq!(reader.spec().channels, 1);
    let back: Vec<i16> = reader
        .samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect();
    // opusdec honours pre-skip and the end trim: exactly the samples we wrote.
    assert_eq!(back.len(), pcm.len());
    let ratio = rms(&back[4_800..]) / rms(&pcm[4_800..]);
    assert!((0.8..1.25).contains(&ratio), "energy ratio {ratio}");
    let _ = std::fs::remove_dir_all(dir);
}
